-- watch.lua: mark a job as followed (its events), and read it.
--
-- KEYS[1]  the job's hash  {prefix}:job:<id>  (field ev set; it stays until the
--          job expires, so later changes of the job are announced too)
--
-- A job that somebody follows is PUBLISHed (JSON [id, its hash]) on the events
-- channel by every script that changes it; a job nobody follows costs no command for it.
--
-- It takes no ARGV and no instant (epoch seconds): following changes no time.
--
-- Returns the job's hash, HGETALL-style, or {} when there is no such job.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {}
end
redis.call('HSET', KEYS[1], 'ev', '1')
return redis.call('HGETALL', KEYS[1])
