-- Shared by the scripts below (prepended to each): a key's counts per second over the last
-- 60 s, held in a hash of second -> count. The clock is Redis's own, so that every replica
-- reads the same minute.
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Besides its seconds, a window's hash keeps `sum` (their total) and `from` (the oldest second
-- that may still hold a count), so that a call reads two fields and the seconds that left the
-- window since the last call, not all 60.
local edge = sec - 59

-- Every second of the window's hash, second -> count (the two bookkeeping fields left out).
local function seconds(key)
  local all = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #all, 2 do
    local s = tonumber(all[i])
    if s then out[s] = tonumber(all[i + 1]) end
  end
  return out
end

-- The window's sum now. `prune` deletes the seconds that left it and writes the new sum.
local function window(key, prune)
  local h = redis.call('HMGET', key, 'sum', 'from')
  local sum, from = tonumber(h[1]) or 0, tonumber(h[2])
  if from == nil or from >= edge then
    return sum
  end
  local stale = {}
  if edge - from <= 60 then
    for s = from, edge - 1 do stale[#stale + 1] = s end
    local counts = redis.call('HMGET', key, unpack(stale))
    for i = 1, #counts do sum = sum - (tonumber(counts[i]) or 0) end
  else
    -- Idle for over a minute: count what is left from scratch.
    sum = 0
    for s, n in pairs(seconds(key)) do
      if s < edge then stale[#stale + 1] = s else sum = sum + n end
    end
  end
  if prune then
    if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
    redis.call('HSET', key, 'sum', sum, 'from', edge)
  end
  return sum
end

-- Count `n` in this second of the window (after `window(key, true)` this minute, or with
-- seconds left to prune by the next call).
local function add(key, n)
  redis.call('HINCRBY', key, sec, n)
  redis.call('HINCRBY', key, 'sum', n)
  redis.call('HSETNX', key, 'from', sec)
  redis.call('EXPIRE', key, 61)
end

-- Milliseconds until a window at `sum` falls under `limit`, as its oldest seconds leave it;
-- `pending` more in this second than the hash holds yet. Only asked of a window at its limit.
local function until_under(key, sum, limit, pending)
  local live = seconds(key)
  live[sec] = (live[sec] or 0) + pending
  local order = {}
  for s in pairs(live) do
    if s >= edge then order[#order + 1] = s end
  end
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
