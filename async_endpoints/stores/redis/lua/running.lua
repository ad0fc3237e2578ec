-- running.lua: every running job with its hash, for a listing page (read in the
-- same MULTI as the page's indexes, so that a job that ends or starts meanwhile
-- is seen once: as it was then).
--
-- KEYS[1]  the leases zset {prefix}:claimed (every running job's id)
-- KEYS[2]  the job key prefix "{prefix}:job:" (each id's hash is KEYS[2] .. id:
--          same hash tag, so the same Cluster slot)
--
-- It reads and writes no instant (epoch seconds).
--
-- Returns {id, fields, id, fields, ...}: fields HGETALL-style; a job whose hash
-- is gone is left out. As many as there are handler threads running jobs.

local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local fields = redis.call('HGETALL', KEYS[2] .. id)
    if #fields > 0 then
        out[#out + 1] = id
        out[#out + 1] = fields
    end
end
return out
