-- prune.lua: drop from indexes the entries of jobs that are gone (expired or
-- deleted), looking at the oldest entries of each index first (the sweeper's
-- part of keeping every index entry no older than its job).
--
-- KEYS[1]   the job key prefix "{prefix}:job:" (each id's hash is KEYS[1] .. id:
--           same hash tag, so the same Cluster slot)
-- KEYS[2..] the indexes to prune: zsets of job ids by creation time
--
-- ARGV[1]  how many of each index's oldest entries to look at (integer > 0)
--
-- It reads and writes no instant (epoch seconds): a job is gone when its hash is.
--
-- Returns how many entries were dropped.

local dropped = 0
for i = 2, #KEYS do
    local ids = redis.call('ZRANGE', KEYS[i], 0, tonumber(ARGV[1]) - 1)
    for _, id in ipairs(ids) do
        if redis.call('EXISTS', KEYS[1] .. id) == 0 then
            redis.call('ZREM', KEYS[i], id)
            dropped = dropped + 1
        end
    end
end
return dropped
