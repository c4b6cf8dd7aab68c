-- A batch of one replica's requests, for one or more client keys, in one atomic step: per key,
-- the requests that ended (their leases released, their tokens charged to the minute and the
-- budget), then the admissions in their order, each checked against the counts its
-- predecessors left (checks in the order the client is told about them).
-- KEYS: per client key, 4: requests (hash), tokens (hash), leases (sorted set: lease id ->
--       expiry ms), budget (hash)
-- ARGV: lease ms, then per client key: requests_per_minute, tokens_per_minute,
--       max_concurrent, budget tokens (each 0: none), budget period number, budget ttl s,
--       ends E, admissions A, E pairs (tokens, lease id or ''), A lease ids (or '')
-- Returns 4 numbers per admission, in order: verdict (0 admitted, 1 requests, 2 tokens,
-- 3 concurrency, 4 budget), remaining requests (-1: no limit), remaining tokens (-1),
-- retry ms.
local lease_ms = tonumber(ARGV[1])
local out = {}
local a = 2
for k = 1, #KEYS, 4 do
  local requests_key, tokens_key, leases_key, budget_key = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local rpm, tpm = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local conc, budget = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local period, ttl = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local ends, admissions = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  a = a + 8

  local charged, released = 0, {}
  for _ = 1, ends do
    charged = charged + tonumber(ARGV[a])
    if ARGV[a + 1] ~= '' then released[#released + 1] = ARGV[a + 1] end
    a = a + 2
  end
  if #released > 0 then redis.call('ZREM', leases_key, unpack(released)) end
  if charged > 0 then
    add(tokens_key, charged)
    if period > 0 then
      local stored = tonumber(redis.call('HGET', budget_key, 'period')) or 0
      if stored < period then
        redis.call('HSET', budget_key, 'period', period, 'used', charged)
      else
        redis.call('HINCRBY', budget_key, 'used', charged)
      end
      redis.call('EXPIRE', budget_key, ttl)
    end
  end

  if admissions > 0 then
    local requests = window(requests_key, true)
    local tokens = window(tokens_key, true)
    local used = 0
    if budget > 0 then used = budget_used(budget_key, period) end
    local in_flight = 0
    if conc > 0 then
      redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', now)
      in_flight = redis.call('ZCARD', leases_key)
    end
    local admitted, taken = 0, {}
    for _ = 1, admissions do
      local lease = ARGV[a]
      a = a + 1
      local left_r, left_t = -1, -1
      if rpm > 0 then left_r = math.max(rpm - requests, 0) end
      if tpm > 0 then left_t = math.max(tpm - tokens, 0) end
      local verdict, wait = 0, 0
      if budget > 0 and used >= budget then
        verdict = 4
      elseif tpm > 0 and tokens >= tpm then
        verdict, wait = 2, until_under(tokens_key, tokens, tpm, 0)
      elseif rpm > 0 and requests >= rpm then
        verdict, wait = 1, until_under(requests_key, requests, rpm, admitted)
      elseif conc > 0 and in_flight >= conc then
        verdict, wait = 3, 1000
      else
        admitted = admitted + 1
        requests = requests + 1
        if rpm > 0 then left_r = left_r - 1 end
        if conc > 0 then
          in_flight = in_flight + 1
          taken[#taken + 1] = now + lease_ms
          taken[#taken + 1] = lease
        end
      end
      out[#out + 1] = verdict
      out[#out + 1] = left_r
      out[#out + 1] = left_t
      out[#out + 1] = wait
    end
    if admitted > 0 then
      add(requests_key, admitted)
    end
    if #taken > 0 then
      redis.call('ZADD', leases_key, unpack(taken))
      redis.call('PEXPIRE', leases_key, lease_ms * 2)
    end
  end
end
return out
