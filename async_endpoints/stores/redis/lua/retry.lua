-- retry.lua: put a Failed job back in the queue, its retry count reset.
--
-- KEYS[1]  the job's hash        {prefix}:job:<id>  (Queued again, expiry removed)
-- KEYS[2]  the waiting-jobs zset {prefix}:ready     (id added, score = now)
-- KEYS[3]  the wake-up list      {prefix}:wake      (one token pushed)
-- KEYS[4]  the callbacks zset     {prefix}:callbacks (a delivery still under way
--          is dropped: the job's callback is Pending again, for its next end)
-- KEYS[5]  the status indexes' prefix "{prefix}:ix:s:" (the id moves from
--          KEYS[5] .. 'Failed:' .. name to KEYS[5] .. 'Queued', score = field c)
-- KEYS[6]  the owners' waiting-jobs prefix "{prefix}:ow:" (a job with an owner,
--          field o, is added to KEYS[6] .. owner)
-- KEYS[7]  the handlers' index prefix "{prefix}:ix:n:" (of jobs not finished:
--          the id is added to KEYS[7] .. name again)
--
-- ARGV[1]  the job id
-- ARGV[2]  now, epoch seconds (float string)
-- ARGV[3]  now on Redis's clock (float string): the zset score
-- ARGV[4]  the events channel {prefix}:events (a channel, not a key): a job
--          that somebody follows (field ev) is PUBLISHed there after the
--          change as JSON [id, its hash HGETALL-style]
--
-- Returns {1, fields} with the job's hash HGETALL-style; {-1} when there is no
-- such job; {-2, status} when the job is not Failed.

local held = redis.call('HMGET', KEYS[1], 's', 'v', 'ev', 'cu', 'c', 'o', 'n')
local status = held[1]
if not status then
    return {-1}
end
if status ~= 'Failed' then
    return {-2, status}
end
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 's', 'Queued', 'd', ARGV[2], 'u', ARGV[2],
    'v', (tonumber(held[2]) or 0) + 1)
redis.call('HDEL', KEYS[1], 'a', 'e')
if held[4] then  -- its next end is delivered anew
    redis.call('HSET', KEYS[1], 'cs', 'Pending')
    redis.call('HDEL', KEYS[1], 'ca', 'ce', 'ct')
    redis.call('ZREM', KEYS[4], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZREM', KEYS[5] .. 'Failed:' .. (held[7] or ''), ARGV[1])
redis.call('ZADD', KEYS[7] .. (held[7] or ''), tonumber(held[5]) or 0, ARGV[1])
redis.call('ZADD', KEYS[5] .. 'Queued', tonumber(held[5]) or 0, ARGV[1])
if held[6] then
    redis.call('ZADD', KEYS[6] .. held[6], ARGV[3], ARGV[1])
end
wake(KEYS[3])
if held[3] then
    redis.call('PUBLISH', ARGV[4],
        cjson.encode({ARGV[1], redis.call('HGETALL', KEYS[1])}))
end
return {1, redis.call('HGETALL', KEYS[1])}
