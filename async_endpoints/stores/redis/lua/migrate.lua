-- migrate.lua: move entries of an older layout's index of one finished status
-- (one zset for every handler) to the index of the job's handler, a batch at a
-- time; the sweeper runs it while the old index exists, then it is gone.
--
-- KEYS[1]  the older index {prefix}:ix:s:<status> (entries removed)
-- KEYS[2]  the status indexes' prefix "{prefix}:ix:s:" (a job still of that
--          status enters KEYS[2] .. status .. ':' .. name, same score)
-- KEYS[3]  the handlers' index prefix "{prefix}:ix:n:" (of jobs not finished:
--          the moved job's id leaves KEYS[3] .. name, where the older layout
--          kept it)
-- KEYS[4]  the names of the handlers with finished jobs {prefix}:ix:names (set;
--          the moved job's name added)
-- KEYS[5]  the job key prefix "{prefix}:job:" (each id's hash is KEYS[5] .. id:
--          same hash tag, so the same Cluster slot)
--
-- ARGV[1]  the status (Completed, Failed or Canceled)
-- ARGV[2]  how many entries to move (integer > 0)
--
-- It reads and writes no instant (epoch seconds): scores are copied as they are.
--
-- Returns how many entries it took from KEYS[1] (moved, or dropped: a job gone
-- or no longer of that status is indexed where it is already).

local entries = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
for i = 1, #entries, 2 do
    local id, score = entries[i], entries[i + 1]
    local job = redis.call('HMGET', KEYS[5] .. id, 's', 'n')
    if job[1] == ARGV[1] then
        local name = job[2] or ''
        redis.call('ZADD', KEYS[2] .. ARGV[1] .. ':' .. name, score, id)
        redis.call('ZREM', KEYS[3] .. name, id)
        redis.call('SADD', KEYS[4], name)
    end
    redis.call('ZREM', KEYS[1], id)
end
return #entries / 2
