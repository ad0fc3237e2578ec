-- purge.lua: delete, among the given jobs, the finished ones of one status that
-- ended before a time. The caller finds candidates with SCAN; this script checks
-- each one again, so a job that changed in between is left alone.
--
-- KEYS[1]..KEYS[n]  job hashes  {prefix}:job:<id>  (deleted when they match)
--
-- ARGV[1]  the status (Completed, Failed or Canceled)
-- ARGV[2]  older than, epoch seconds (float string): completion before it
--
-- Returns how many jobs were deleted.

local deleted = 0
local cutoff = tonumber(ARGV[2])
for i = 1, #KEYS do
    local job = redis.call('HMGET', KEYS[i], 's', 'e')
    if job[1] == ARGV[1] and job[2] and tonumber(job[2]) < cutoff then
        redis.call('DEL', KEYS[i])
        deleted = deleted + 1
    end
end
return deleted
