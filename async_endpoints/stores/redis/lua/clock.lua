-- clock.lua: Redis's clock, for the offset between it and a process's clock.
--
-- KEYS[1]  any key of the prefix (it routes the call to the prefix's server on a
--          Cluster; not read)
--
-- Returns {seconds, microseconds} as TIME does: epoch seconds, and the
-- microseconds within the second.

local t = redis.call('TIME')
return {t[1], t[2]}
