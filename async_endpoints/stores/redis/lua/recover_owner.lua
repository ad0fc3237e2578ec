-- recover_owner.lua: re-lease, under fresh tokens, every job a given worker
-- holds: that worker's process is known to be dead (its gunicorn master saw it
-- die), so its leases need not run out first.
--
-- KEYS[1]  the leases zset    {prefix}:claimed  (recovered ids get the new lease end)
-- KEYS[2]  the job key prefix "{prefix}:job:"   the ids are learnt only inside
--          this step, so each job hash is KEYS[2] .. id (same hash tag, so the
--          same Cluster slot); a recovered hash gets the new token and worker.
--
-- ARGV[1]  the dead worker's name (as its claims recorded it in field w)
-- ARGV[2]  limit (integer > 0)
-- ARGV[3]  the new lease end on Redis's clock, epoch seconds (float string)
-- ARGV[4]  the request id (random hex); the i-th claim's token is id .. ':' .. i
-- ARGV[5]  the recovering worker's name
--
-- Only jobs still InProgress under that worker's name are taken: a job it
-- handed back, finished, or lost to a sweep is someone else's now.
--
-- Returns {id, token, fields, id, token, fields, ...}: fields is the job's hash,
-- HGETALL-style.

local out = {}
local n = 0
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
    if n >= tonumber(ARGV[2]) then
        break
    end
    local key = KEYS[2] .. id
    local held = redis.call('HMGET', key, 's', 'w')
    if held[1] == 'InProgress' and held[2] == ARGV[1] then
        n = n + 1
        relet(out, key, id, ARGV[4] .. ':' .. n, ARGV[5], KEYS[1], ARGV[3])
    end
end
return out
