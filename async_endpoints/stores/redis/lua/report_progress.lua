-- report_progress.lua: record a held job's progress.
--
-- KEYS[1]  the job's hash  {prefix}:job:<id>  (progress and update time set)
--
-- ARGV[1]  the claim token (fencing: must be the job's current token)
-- ARGV[2]  now, epoch seconds (float string)
-- ARGV[3]  the progress as JSON
-- ARGV[4]  the job id
-- ARGV[5]  the events channel {prefix}:events (a channel, not a key): a job
--          that somebody follows (field ev) is PUBLISHed there after the
--          change as JSON [id, its hash HGETALL-style]
--
-- Returns 1 if applied, 0 if the token or status no longer match.

local held = redis.call('HMGET', KEYS[1], 's', 't', 'v', 'ev')
if held[1] ~= 'InProgress' or held[2] ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'g', ARGV[3], 'u', ARGV[2], 'v', (tonumber(held[3]) or 0) + 1)
if held[4] then
    redis.call('PUBLISH', ARGV[5],
        cjson.encode({ARGV[4], redis.call('HGETALL', KEYS[1])}))
end
return 1
