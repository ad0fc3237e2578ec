-- cancel.lua: cancel a waiting job at once, or flag a running one.
--
-- KEYS[1]  the job's hash        {prefix}:job:<id>  (Canceled and EXPIREd, or flagged)
-- KEYS[2]  the waiting-jobs zset {prefix}:ready     (id removed when canceled)
-- KEYS[3]  the callbacks zset     {prefix}:callbacks (id added, due at once, when
--          a canceled job has a callback URL: field cu)
-- KEYS[4]  the status indexes' prefix "{prefix}:ix:s:" (a waiting job's id
--          moves to Canceled, per handler: KEYS[4] .. 'Canceled:' .. name,
--          score = field c)
-- KEYS[5]  the finished-per-minute counts {prefix}:ix:finished (hash; the
--          field floor(now / 60) raised by one when the job ends here)
-- KEYS[6]  the owners' waiting-jobs prefix "{prefix}:ow:" (a canceled waiting
--          job with an owner, field o, leaves KEYS[6] .. owner)
-- KEYS[7]  the parked jobs' prefix "{prefix}:parked:" (a canceled waiting job of
--          a handler with a concurrency limit, field cc, leaves KEYS[7] .. name;
--          if the handler has a free slot, one parked job goes back to KEYS[2]:
--          the canceled job may have been the one let out for it)
-- KEYS[8]  the running counts {prefix}:running (hash: name -> jobs running)
-- KEYS[9]  the wake-up list {prefix}:wake (woken when a parked job goes back)
-- KEYS[10] the handlers' index prefix "{prefix}:ix:n:" (of jobs not finished:
--          a canceled job's id leaves KEYS[10] .. name)
-- KEYS[11] the names of the handlers with finished jobs {prefix}:ix:names (set;
--          a canceled job's name added)
-- KEYS[12] the fair-claims state {prefix}:fair (zset; an owner left with no
--          waiting job by this cancel loses its entry 'o:' .. owner, so that
--          its next job is not placed behind the jobs it canceled)
--
-- ARGV[1]  the job id
-- ARGV[2]  now, epoch seconds (float string)
-- ARGV[3]  ttl of the canceled job, whole seconds (integer >= 1)
-- ARGV[4]  the job's end channel {prefix}:ended:<id>: PUBLISHed to when the job
--          ends here and somebody waits for that (field lp, set by await.lua),
--          so that long-polling readers wake (a channel, not a key)
-- ARGV[5]  the cancels channel {prefix}:cancels: PUBLISHed the job's id when a
--          running job is flagged, so that the process running it stops it at
--          once (a channel, not a key)
-- ARGV[6]  the events channel {prefix}:events (a channel, not a key): a job
--          that somebody follows (field ev) is PUBLISHed there after the
--          change as JSON [id, its hash HGETALL-style]
--
-- Returns {code, fields}: code 1 = the job (now Canceled, flagged, or already
-- Canceled) with its hash HGETALL-style; -1 = no such job ({-1});
-- -2 = the job is Completed or Failed ({-2, status}).

local held = redis.call('HMGET', KEYS[1], 's', 'v', 'ev', 'cu', 'c', 'o', 'cc', 'n',
    'lp')
local name = held[8] or ''  -- a record without one: '' (it still ends)
local status = held[1]
if not status then
    return {-1}
end
local version = (tonumber(held[2]) or 0) + 1
if status == 'Completed' or status == 'Failed' then
    return {-2, status}
end
if status == 'InProgress' then
    if not redis.call('HGET', KEYS[1], 'k') then
        redis.call('HSET', KEYS[1], 'k', '1', 'u', ARGV[2], 'v', version)
        redis.call('PUBLISH', ARGV[5], ARGV[1])
        if held[3] then
            redis.call('PUBLISH', ARGV[6],
                cjson.encode({ARGV[1], redis.call('HGETALL', KEYS[1])}))
        end
    end
elseif status ~= 'Canceled' then
    -- u (last updated) goes: a finished job's is its end, e.
    redis.call('HSET', KEYS[1], 's', 'Canceled', 'k', '1', 'e', ARGV[2], 'v', version)
    redis.call('HDEL', KEYS[1], 'd', 'u')
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('ZREM', KEYS[4] .. status, ARGV[1])
    if held[6] then
        redis.call('ZREM', KEYS[6] .. held[6], ARGV[1])
        if redis.call('EXISTS', KEYS[6] .. held[6]) == 0 then
            fair('ZREM', KEYS[12], 'o:' .. held[6])
        end
    end
    if held[7] then
        redis.call('ZREM', KEYS[7] .. held[8], ARGV[1])
        local running = tonumber(redis.call('HGET', KEYS[8], held[8]) or '0')
        if running < tonumber(held[7]) then
            unpark_one(KEYS[7], held[8], KEYS[2], KEYS[9])
        end
    end
    redis.call('ZADD', KEYS[4] .. 'Canceled:' .. name, tonumber(held[5]) or 0,
        ARGV[1])
    redis.call('ZREM', KEYS[10] .. name, ARGV[1])
    redis.call('SADD', KEYS[11], name)
    redis.call('HINCRBY', KEYS[5], math.floor(tonumber(ARGV[2]) / 60), 1)
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    if held[4] then
        redis.call('ZADD', KEYS[3], 0, ARGV[1])
    end
    if held[9] then  -- somebody waits for its end (await.lua)
        redis.call('PUBLISH', ARGV[4], 'Canceled')
    end
    if held[3] then
        redis.call('PUBLISH', ARGV[6],
            cjson.encode({ARGV[1], redis.call('HGETALL', KEYS[1])}))
    end
end
return {1, redis.call('HGETALL', KEYS[1])}
