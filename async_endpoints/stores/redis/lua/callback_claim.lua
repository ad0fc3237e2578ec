-- callback_claim.lua: lease up to `limit` due callback deliveries to one worker.
--
-- KEYS[1]  the callbacks zset  {prefix}:callbacks  (score = when the delivery is
--          due, on Redis's clock; a claimed one's score becomes its lease end,
--          so a delivery whose process died is due again when the lease ends)
-- KEYS[2]  the job key prefix "{prefix}:job:"  the ids are learnt only inside
--          this step, so each job hash is KEYS[2] .. id (same hash tag, so the
--          same Cluster slot)
--
-- ARGV[1]  now on Redis's clock, epoch seconds (float string)
-- ARGV[2]  limit (integer > 0)
-- ARGV[3]  the lease end on Redis's clock, epoch seconds (float string)
-- ARGV[4]  the request id (random hex); the i-th delivery's token is id .. ':' .. i
--
-- Each claimed job gets the token (field ct), one more attempt (ca) and one more
-- version (v). Ids whose job is gone or whose callback is no longer Pending
-- (field cs) are dropped from the zset.
--
-- Returns {id, token, fields, id, token, fields, ...}: fields is the job's hash
-- after the claim, HGETALL-style.

local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i, id in ipairs(ids) do
    local key = KEYS[2] .. id
    local held = redis.call('HMGET', key, 'cs', 'ca', 'v')
    if held[1] == 'Pending' then
        local token = ARGV[4] .. ':' .. i
        redis.call('HSET', key, 'ct', token, 'ca', (tonumber(held[2]) or 0) + 1,
            'v', (tonumber(held[3]) or 0) + 1)
        redis.call('ZADD', KEYS[1], ARGV[3], id)
        out[#out + 1] = id
        out[#out + 1] = token
        out[#out + 1] = redis.call('HGETALL', key)
    else
        redis.call('ZREM', KEYS[1], id)
    end
end
return out
