-- A request's end: its lease released and its tokens charged to the minute and the budget.
-- KEYS: tokens (hash), leases (sorted set), budget (hash)
-- ARGV: tokens, lease id ('' for none), budget period number (0: no budget), budget ttl s
local tokens = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[2])
end
if tokens > 0 then
  redis.call('HINCRBY', KEYS[1], sec, tokens)
  redis.call('EXPIRE', KEYS[1], 61)
  local period = tonumber(ARGV[3])
  if period > 0 then
    local stored = tonumber(redis.call('HGET', KEYS[3], 'period')) or 0
    if stored < period then
      redis.call('HSET', KEYS[3], 'period', period, 'used', tokens)
    else
      redis.call('HINCRBY', KEYS[3], 'used', tokens)
    end
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
  end
end
return 0
