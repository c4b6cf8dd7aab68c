-- The leases this replica still holds, pushed forward by a lease time (only those that have
-- not expired or been released: XX never adds one back).
-- KEYS: leases (sorted set). ARGV: lease ms, lease ids...
local lease_ms = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + lease_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease_ms * 2)
return 0
