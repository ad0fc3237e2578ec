-- claim.lua: lease up to `limit` due waiting jobs to one worker, earliest first.
--
-- KEYS[1]  the waiting-jobs zset   {prefix}:ready    (due ids removed)
-- KEYS[2]  the leases zset         {prefix}:claimed  (ids added, score = lease end)
-- KEYS[3]  the job key prefix      "{prefix}:job:"   the ids are learnt only
--          inside this step, so each job hash is KEYS[3] .. id (same hash tag,
--          so the same Cluster slot); each claimed hash becomes InProgress.
--
-- ARGV[1]  now, epoch seconds (float string): jobs due at or before it are taken
-- ARGV[2]  limit (integer > 0)
-- ARGV[3]  lease end, epoch seconds (float string): now + lease
-- ARGV[4]  token base (random hex); the i-th claim's token is base .. ':' .. i
-- ARGV[5]  the claiming worker's name
--
-- Returns {next_due, id, token, fields, id, token, fields, ...}: fields is the
-- claimed job's hash, HGETALL-style. next_due is the score (epoch seconds) of
-- the earliest job still waiting when fewer than `limit` were claimed, else ''.
-- Ids in the zset whose hash is gone (or no longer waiting) are dropped.

local now, limit = ARGV[1], tonumber(ARGV[2])
local out = {''}
local n = 0
while n < limit do
    local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit - n)
    if #ids == 0 then
        break
    end
    for _, id in ipairs(ids) do
        redis.call('ZREM', KEYS[1], id)
        local key = KEYS[3] .. id
        local status = redis.call('HGET', key, 's')
        if status == 'Queued' or status == 'Scheduled' then
            n = n + 1
            local token = ARGV[4] .. ':' .. n
            redis.call('HSET', key, 's', 'InProgress', 'b', now, 'u', now,
                't', token, 'w', ARGV[5])
            redis.call('HDEL', key, 'd')
            redis.call('ZADD', KEYS[2], ARGV[3], id)
            out[#out + 1] = id
            out[#out + 1] = token
            out[#out + 1] = redis.call('HGETALL', key)
        end
    end
end
if n < limit then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    if first[2] then
        out[1] = first[2]
    end
end
return out
