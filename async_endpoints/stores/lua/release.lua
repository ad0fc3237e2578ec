-- release.lua: hand held jobs back to the queue, due at once, counting no attempt.
--
-- KEYS[1]    the waiting-jobs zset  {prefix}:ready    (released ids added, score = now)
-- KEYS[2]    the leases zset        {prefix}:claimed  (released ids removed)
-- KEYS[3]    the wake-up list       {prefix}:wake     (one token pushed if any released)
-- KEYS[3+i]  the i-th claimed job's hash  {prefix}:job:<id>  (made Queued)
--
-- ARGV[1]      now, epoch seconds (float string)
-- ARGV[2i]     the i-th claim's job id
-- ARGV[2i+1]   the i-th claim's token
--
-- Returns the number of jobs released (claims whose token no longer matched
-- are skipped).

local released = 0
for i = 4, #KEYS do
    local id, token = ARGV[2 * (i - 3)], ARGV[2 * (i - 3) + 1]
    local held = redis.call('HMGET', KEYS[i], 's', 't')
    if held[1] == 'InProgress' and held[2] == token then
        redis.call('HSET', KEYS[i], 's', 'Queued', 'd', ARGV[1], 'u', ARGV[1])
        redis.call('HDEL', KEYS[i], 't', 'w')
        redis.call('ZREM', KEYS[2], id)
        redis.call('ZADD', KEYS[1], ARGV[1], id)
        released = released + 1
    end
end
if released > 0 then
    redis.call('LPUSH', KEYS[3], '1')
    redis.call('LTRIM', KEYS[3], 0, 63)
end
return released
