-- fail.lua: record a held job's failed attempt: Scheduled for a retry, Failed,
-- or Canceled if its cancellation was requested.
--
-- KEYS[1]  the job's hash        {prefix}:job:<id>  (updated; EXPIREd if finished)
-- KEYS[2]  the waiting-jobs zset {prefix}:ready     (id added on retry; a held job
--          is never waiting, so there is nothing to remove otherwise)
-- KEYS[3]  the leases zset       {prefix}:claimed   (id removed)
-- KEYS[4]  the wake-up list      {prefix}:wake      (one token pushed on retry)
-- KEYS[5]  the callbacks zset     {prefix}:callbacks (id added, due at once, when
--          the job ends and has a callback URL: field cu)
-- KEYS[6]  the status indexes' prefix "{prefix}:ix:s:" (the id enters the new
--          status's index, score = field c: KEYS[6] .. status, or, once the job
--          ended, KEYS[6] .. status .. ':' .. name; running jobs have no status
--          index but KEYS[3])
-- KEYS[7]  the finished-per-minute counts {prefix}:ix:finished (hash; the
--          field floor(now / 60) raised by one when the job ends)
-- KEYS[8]  the owners' waiting-jobs prefix "{prefix}:ow:" (a retried job with an
--          owner, field o, is added to KEYS[8] .. owner)
-- KEYS[9]  the running counts {prefix}:running (hash; a handler with a
--          concurrency limit, field cc, runs one job fewer)
-- KEYS[10] the parked jobs' prefix "{prefix}:parked:" (one of the handler's
--          parked jobs, if any, moves back to KEYS[2], and KEYS[4] is woken)
-- KEYS[11] the handlers' index prefix "{prefix}:ix:n:" (of jobs not finished:
--          an ended job's id leaves KEYS[11] .. name)
-- KEYS[12] the names of the handlers with finished jobs {prefix}:ix:names (set;
--          the name added when the job ends)
--
-- ARGV[1]  the job id
-- ARGV[2]  the claim token (fencing: must be the job's current token)
-- ARGV[3]  now, epoch seconds (float string)
-- ARGV[4]  the error as JSON
-- ARGV[5]  retry_at on the caller's clock, epoch seconds (float string), or ''
--          to fail for good (the hash's due time)
-- ARGV[6]  ttl of a finished job, whole seconds (integer >= 1)
-- ARGV[7]  the job's end channel {prefix}:ended:<id>: PUBLISHed to when the job
--          ends and somebody waits for that (field lp, set by await.lua), so
--          that long-polling readers wake (a channel, not a key)
-- ARGV[8]  retry_at on Redis's clock (the zset score), or ''
-- ARGV[9]  the events channel {prefix}:events (a channel, not a key): a job
--          that somebody follows (field ev) is PUBLISHed there after the
--          change as JSON [id, its hash HGETALL-style]
--
-- Returns 1 if applied, 0 if the token or status no longer match. The field lt
-- keeps "f" .. the token's first 8 characters (of its request id: unique among
-- a job's attempts) of the failure recorded last, so that the same call sent
-- again (its reply was lost) also answers 1 and changes nothing.

local held = redis.call('HMGET', KEYS[1], 's', 't', 'k', 'lt', 'v', 'ev', 'cu', 'c', 'o',
    'cc', 'n', 'lp')
local name = held[11] or ''  -- a record without one: '' (it still ends)
if held[1] ~= 'InProgress' or held[2] ~= ARGV[2] then
    return held[4] == 'f' .. string.sub(ARGV[2], 1, 8) and 1 or 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
if held[10] then  -- a slot of a limited handler frees: one parked job back
    free_slot(KEYS[9], KEYS[10], held[11], KEYS[2], KEYS[4])
end

redis.call('HDEL', KEYS[1], 't', 'w', 'hb', 'pv')
redis.call('HSET', KEYS[1], 'lt', 'f' .. string.sub(ARGV[2], 1, 8),
    'v', (tonumber(held[5]) or 0) + 1)
if held[3] or ARGV[5] == '' then
    local status = held[3] and 'Canceled' or 'Failed'
    -- u (last updated) goes: a finished job's is its end, e.
    redis.call('HSET', KEYS[1], 's', status, 'x', ARGV[4], 'e', ARGV[3])
    redis.call('HDEL', KEYS[1], 'd', 'u')
    redis.call('EXPIRE', KEYS[1], ARGV[6])
    redis.call('ZADD', KEYS[6] .. status .. ':' .. name, tonumber(held[8]) or 0,
        ARGV[1])
    redis.call('ZREM', KEYS[11] .. name, ARGV[1])
    redis.call('SADD', KEYS[12], name)
    redis.call('HINCRBY', KEYS[7], math.floor(tonumber(ARGV[3]) / 60), 1)
    if held[7] then
        redis.call('ZADD', KEYS[5], 0, ARGV[1])
    end
    if held[12] then  -- somebody waits for its end (await.lua)
        redis.call('PUBLISH', ARGV[7], status)
    end
else
    redis.call('HSET', KEYS[1], 's', 'Scheduled', 'x', ARGV[4], 'd', ARGV[5],
        'u', ARGV[3])
    redis.call('HINCRBY', KEYS[1], 'a', 1)
    redis.call('ZADD', KEYS[6] .. 'Scheduled', tonumber(held[8]) or 0, ARGV[1])
    if held[9] then
        redis.call('ZADD', KEYS[8] .. held[9], ARGV[8], ARGV[1])
    end
    redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
    wake(KEYS[4])
end
if held[6] then
    redis.call('PUBLISH', ARGV[9],
        cjson.encode({ARGV[1], redis.call('HGETALL', KEYS[1])}))
end
return 1
