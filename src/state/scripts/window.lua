-- Shared by the scripts below (prepended to each): a key's counts per second over the last
-- 60 s, held in a hash of second -> count. The clock is Redis's own, so that every replica
-- reads the same minute.
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)

-- The window's sum and its live seconds (second -> count). `prune` deletes the seconds that
-- left the window.
local function window(key, prune)
  local all = redis.call('HGETALL', key)
  local sum, stale, live = 0, {}, {}
  for i = 1, #all, 2 do
    local s, n = tonumber(all[i]), tonumber(all[i + 1])
    if s <= sec - 60 then
      stale[#stale + 1] = all[i]
    else
      sum = sum + n
      live[s] = n
    end
  end
  if prune and #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  return sum, live
end

-- Milliseconds until a window at `sum` (its seconds in `live`) falls under `limit`, as its
-- oldest seconds leave it. Only asked of a window at its limit or over.
local function until_under(live, sum, limit)
  local order = {}
  for s in pairs(live) do order[#order + 1] = s end
  table.sort(order)
  for _, s in ipairs(order) do
    sum = sum - live[s]
    if sum < limit then return (s + 60) * 1000 - now end
  end
  return (sec + 60) * 1000 - now
end

-- Tokens of the budget's period: a period number older than the caller's is a finished
-- period (0 used); a newer one was written by a replica whose clock is ahead, and counts.
local function budget_used(key, period)
  local b = redis.call('HMGET', key, 'period', 'used')
  if (tonumber(b[1]) or 0) >= period then
    return tonumber(b[2]) or 0
  end
  return 0
end
