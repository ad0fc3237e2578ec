-- recover_expired.lua: re-lease, under fresh tokens, jobs whose lease has ended.
--
-- KEYS[1]  the leases zset    {prefix}:claimed  (recovered ids get the new lease end)
-- KEYS[2]  the job key prefix "{prefix}:job:"   the ids are learnt only inside
--          this step, so each job hash is KEYS[2] .. id (same hash tag, so the
--          same Cluster slot); a recovered hash gets the new token and worker.
--
-- KEYS[3]  the request's record {prefix}:req:<request id> (as in claim.lua)
--
-- ARGV[1]  now on Redis's clock, epoch seconds (float string): leases ending at
--          or before it
-- ARGV[2]  limit (integer > 0)
-- ARGV[3]  the new lease end on Redis's clock, epoch seconds (float string)
-- ARGV[4]  the request id (random hex); the i-th claim's token is id .. ':' .. i
-- ARGV[5]  the recovering worker's name
-- ARGV[6]  how long the request's record is kept, milliseconds (integer)
--
-- A request sent again (its reply was lost) recovers nothing new: it answers
-- with the jobs the first call took that are still held under its tokens, their
-- leases (and the record) renewed.
--
-- Returns {id, token, fields, id, token, fields, ...}: fields is the job's hash,
-- HGETALL-style. Ids whose hash is gone or not InProgress are dropped from the
-- zset (and not counted again: the next sweep takes the jobs behind them).

local out = {}
local done = redis.call('GET', KEYS[3])
if done then
    for pair in string.gmatch(done, '[^,]+') do
        local i, id = string.match(pair, '^(%d+)=(.+)$')
        local key = KEYS[2] .. id
        local token = ARGV[4] .. ':' .. i
        local held = redis.call('HMGET', key, 's', 't')
        if held[1] == 'InProgress' and held[2] == token then
            redis.call('ZADD', KEYS[1], ARGV[3], id)
            out[#out + 1] = id
            out[#out + 1] = token
            out[#out + 1] = redis.call('HGETALL', key)
        end
    end
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
    return out
end
local taken = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i, id in ipairs(ids) do
    local key = KEYS[2] .. id
    if redis.call('HGET', key, 's') == 'InProgress' then
        relet(out, key, id, ARGV[4] .. ':' .. i, ARGV[5], KEYS[1], ARGV[3])
        taken[#taken + 1] = i .. '=' .. id
    else
        redis.call('ZREM', KEYS[1], id)
    end
end
if #taken > 0 then
    redis.call('SET', KEYS[3], table.concat(taken, ','), 'PX', ARGV[6])
end
return out
