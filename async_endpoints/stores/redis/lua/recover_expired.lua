-- recover_expired.lua: re-lease, under fresh tokens, jobs whose lease has ended.
--
-- KEYS[1]  the leases zset    {prefix}:claimed  (recovered ids get the new lease end)
-- KEYS[2]  the job key prefix "{prefix}:job:"   the ids are learnt only inside
--          this step, so each job hash is KEYS[2] .. id (same hash tag, so the
--          same Cluster slot); a recovered hash gets the new token and worker.
--
-- ARGV[1]  now, epoch seconds (float string): leases ending at or before it
-- ARGV[2]  limit (integer > 0)
-- ARGV[3]  the new lease end, epoch seconds (float string): now + lease
-- ARGV[4]  token base (random hex); the i-th claim's token is base .. ':' .. i
-- ARGV[5]  the recovering worker's name
--
-- Returns {id, token, fields, id, token, fields, ...}: fields is the job's hash,
-- HGETALL-style. Ids whose hash is gone or not InProgress are dropped from the
-- zset (and not counted again: the next sweep takes the jobs behind them).

local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i, id in ipairs(ids) do
    local key = KEYS[2] .. id
    if redis.call('HGET', key, 's') == 'InProgress' then
        local token = ARGV[4] .. ':' .. i
        redis.call('HSET', key, 't', token, 'w', ARGV[5])
        redis.call('ZADD', KEYS[1], ARGV[3], id)
        out[#out + 1] = id
        out[#out + 1] = token
        out[#out + 1] = redis.call('HGETALL', key)
    else
        redis.call('ZREM', KEYS[1], id)
    end
end
return out
