-- One admission: every check and, when all pass, the request counted and its lease taken, in
-- one atomic step. Checks in the order the client is told about them.
-- KEYS: requests (hash), tokens (hash), leases (sorted set: lease id -> expiry ms), budget (hash)
-- ARGV: requests_per_minute, tokens_per_minute, max_concurrent, budget tokens (each 0: none),
--       lease id, lease ms, budget period number
-- Returns {verdict, remaining requests (-1: no limit), remaining tokens (-1), retry ms}:
-- verdict 0 admitted, 1 requests, 2 tokens, 3 concurrency, 4 budget.
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local conc, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[6])

local requests, requests_wait = window(KEYS[1], rpm, true)
local tokens, tokens_wait = window(KEYS[2], tpm, true)
local left_r, left_t = -1, -1
if rpm > 0 then left_r = math.max(rpm - requests, 0) end
if tpm > 0 then left_t = math.max(tpm - tokens, 0) end

if budget > 0 and budget_used(KEYS[4], tonumber(ARGV[7])) >= budget then
  return {4, left_r, left_t, 0}
end
if tpm > 0 and tokens >= tpm then
  return {2, left_r, left_t, tokens_wait}
end
if rpm > 0 and requests >= rpm then
  return {1, left_r, left_t, requests_wait}
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then
    return {3, left_r, left_t, 1000}
  end
  redis.call('ZADD', KEYS[3], now + lease_ms, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], lease_ms * 2)
end
redis.call('HINCRBY', KEYS[1], sec, 1)
redis.call('EXPIRE', KEYS[1], 61)
if rpm > 0 then left_r = left_r - 1 end
return {0, left_r, left_t, 0}
