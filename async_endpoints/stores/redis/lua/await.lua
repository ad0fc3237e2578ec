-- await.lua: say that somebody waits for a job's end, and how the job stands.
-- The waiter has subscribed to the job's end channel before this call, so an
-- end after it is PUBLISHed to the waiter and an end before it is seen here.
--
-- KEYS[1]  the job's hash {prefix}:job:<id> (field lp set while it has not
--          ended; the scripts that end it PUBLISH its end only when lp is there)
--
-- It reads and writes no instant (epoch seconds).
--
-- Returns the job's status, or false when there is no such job (nothing is
-- written then: a missing hash is not created).

local status = redis.call('HGET', KEYS[1], 's')
if not status then
    return false
end
if status ~= 'Completed' and status ~= 'Failed' and status ~= 'Canceled' then
    redis.call('HSET', KEYS[1], 'lp', '1')
end
return status
