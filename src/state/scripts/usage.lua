-- A key's live usage, read only. KEYS: requests, tokens, leases, budget. ARGV: budget period.
-- Returns {requests this minute, tokens this minute, leases live, budget used}.
local requests = window(KEYS[1], false)
local tokens = window(KEYS[2], false)
local live = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
local period = tonumber(ARGV[1])
local used = 0
if period > 0 then used = budget_used(KEYS[4], period) end
return {requests, tokens, live, used}
