--[[
The ceiling of examples/flood.rs: a naive per-request sliding window, one call per request, as
most rate limiters run it. redis-benchmark calls it by EVALSHA at the same concurrency as the
Sluice scenarios, so Redis CPU per call here is the yardstick for Redis CPU per check in Sluice.
Five commands: TIME, ZREMRANGEBYSCORE, ZCARD, ZADD, PEXPIRE.

KEYS[1]  the sorted set (one key: the hot-key case of the one-tenant scenario)
ARGV[1]  window in milliseconds
ARGV[2]  limit (hits allowed in the window)
ARGV[3]  member for this hit (redis-benchmark's __rand_int__, so members differ)

Returns  1 when the hit was allowed and recorded, else 0.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    return 1
end
return 0
