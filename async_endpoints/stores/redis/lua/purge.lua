-- purge.lua: delete, among the given jobs, the finished ones of one status that
-- ended before a time, with their index entries. The caller finds candidates in
-- the status's index; this script checks each one again, so a job that changed
-- in between is left alone, and drops the index entries of jobs already gone.
--
-- KEYS[1]  the status's index of one handler {prefix}:ix:s:<status>:<name> (ids
--          removed)
-- KEYS[2]  the handlers' index prefix "{prefix}:ix:n:" (of jobs not finished: a
--          deleted job's id is removed from KEYS[2] .. its name, in case)
-- KEYS[3]  the owners' index prefix "{prefix}:ix:o:" (and from KEYS[3] .. its
--          owner, if it has one)
-- KEYS[4]  the job key prefix "{prefix}:job:" (each candidate's hash is
--          KEYS[4] .. id: same hash tag, so the same Cluster slot)
--
-- ARGV[1]  the status (Completed, Failed or Canceled)
-- ARGV[2]  older than, epoch seconds (float string): completion before it
-- ARGV[3..] the candidates' ids
--
-- Returns {deleted, dropped}: how many jobs were deleted, and how many entries
-- of jobs already gone were dropped (both leave KEYS[1]).

local deleted, dropped = 0, 0
local cutoff = tonumber(ARGV[2])
for i = 3, #ARGV do
    local id = ARGV[i]
    local job = redis.call('HMGET', KEYS[4] .. id, 's', 'e', 'n', 'o')
    if not job[1] then
        redis.call('ZREM', KEYS[1], id)  -- expired: its entry goes too
        dropped = dropped + 1
    elseif job[1] == ARGV[1] and job[2] and tonumber(job[2]) < cutoff then
        redis.call('DEL', KEYS[4] .. id)
        redis.call('ZREM', KEYS[1], id)
        redis.call('ZREM', KEYS[2] .. job[3], id)
        if job[4] then
            redis.call('ZREM', KEYS[3] .. job[4], id)
        end
        deleted = deleted + 1
    end
end
return {deleted, dropped}
