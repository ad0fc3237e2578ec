-- release.lua: hand held jobs back to the queue, due at once, counting no attempt
-- but one more hand-back in a row (field hb);
-- a job whose cancellation was requested ends Canceled instead (its handler was
-- told to stop and will not report back).
--
-- KEYS[1]    the waiting-jobs zset  {prefix}:ready    (released ids added, score = now)
-- KEYS[2]    the leases zset        {prefix}:claimed  (released ids removed)
-- KEYS[3]    the wake-up list       {prefix}:wake     (one token pushed if any queued)
-- KEYS[4]    the callbacks zset     {prefix}:callbacks (a canceled job with a
--            callback URL, field cu, is added, due at once)
-- KEYS[5]    the status indexes' prefix "{prefix}:ix:s:" (a released id enters
--            KEYS[5] .. 'Queued', or KEYS[5] .. 'Canceled:' .. name, score =
--            field c; running jobs have no status index but KEYS[2])
-- KEYS[6]    the finished-per-minute counts {prefix}:ix:finished (hash; the
--            field floor(now / 60) raised by one per job canceled here)
-- KEYS[7]    the owners' waiting-jobs prefix "{prefix}:ow:" (a job handed back
--            with an owner, field o, is added to KEYS[7] .. owner)
-- KEYS[8]    the running counts {prefix}:running (hash; a handler with a
--            concurrency limit, field cc, runs one job fewer)
-- KEYS[9]    the parked jobs' prefix "{prefix}:parked:" (one of the handler's
--            parked jobs, if any, moves back to KEYS[1], and KEYS[3] is woken)
-- KEYS[10]   the handlers' index prefix "{prefix}:ix:n:" (of jobs not
--            finished: a canceled job's id leaves KEYS[10] .. name)
-- KEYS[11]   the names of the handlers with finished jobs {prefix}:ix:names
--            (set; a canceled job's name added)
-- KEYS[11+i] the i-th claimed job's hash  {prefix}:job:<id>  (Queued, or Canceled
--            and EXPIREd)
--
-- ARGV[1]      now, epoch seconds (float string)
-- ARGV[2]      ttl of a canceled job, whole seconds (integer >= 1)
-- ARGV[3]      the end-channel prefix {prefix}:ended: (channels, not keys): a
--              canceled job is PUBLISHed on ARGV[3] .. id when somebody waits for
--              its end (field lp, set by await.lua)
-- ARGV[4]      now on Redis's clock (float string): the released ids' score
-- ARGV[5]      the events channel {prefix}:events: PUBLISHed a released job as
--              JSON [id, its hash HGETALL-style] when somebody follows it
-- ARGV[2i+4]   the i-th claim's job id
-- ARGV[2i+5]   the i-th claim's token
--
-- Returns the number of jobs released (claims whose token no longer matched
-- are skipped).

local released, queued = 0, 0
for i = 12, #KEYS do
    local n = i - 11
    local id, token = ARGV[2 * n + 4], ARGV[2 * n + 5]
    local held = redis.call('HMGET', KEYS[i], 's', 't', 'k', 'v', 'ev', 'cu', 'c', 'o',
        'cc', 'n', 'lp')
    if held[1] == 'InProgress' and held[2] == token then
        redis.call('HDEL', KEYS[i], 't', 'w', 'u', 'pv')  -- u: set again below, or e
        local version = (tonumber(held[4]) or 0) + 1
        redis.call('ZREM', KEYS[2], id)
        if held[9] then  -- a slot of a limited handler frees: one parked job back
            free_slot(KEYS[8], KEYS[9], held[10], KEYS[1], KEYS[3])
        end

        if held[3] then
            redis.call('ZADD', KEYS[5] .. 'Canceled:' .. (held[10] or ''), tonumber(held[7]) or 0,
                id)
            redis.call('ZREM', KEYS[10] .. (held[10] or ''), id)
            redis.call('SADD', KEYS[11], held[10] or '')
            redis.call('HINCRBY', KEYS[6], math.floor(tonumber(ARGV[1]) / 60), 1)
            redis.call('HSET', KEYS[i], 's', 'Canceled', 'e', ARGV[1], 'v', version)
            redis.call('EXPIRE', KEYS[i], ARGV[2])
            if held[6] then
                redis.call('ZADD', KEYS[4], 0, id)
            end
            if held[11] then  -- somebody waits for its end (await.lua)
                redis.call('PUBLISH', ARGV[3] .. id, 'Canceled')
            end
        else
            redis.call('HSET', KEYS[i], 's', 'Queued', 'd', ARGV[1], 'u', ARGV[1],
                'v', version)
            redis.call('HINCRBY', KEYS[i], 'hb', 1)
            redis.call('ZADD', KEYS[5] .. 'Queued', tonumber(held[7]) or 0, id)
            if held[8] then
                redis.call('ZADD', KEYS[7] .. held[8], ARGV[4], id)
            end
            redis.call('ZADD', KEYS[1], ARGV[4], id)
            queued = queued + 1
        end
        if held[5] then
            redis.call('PUBLISH', ARGV[5],
                cjson.encode({id, redis.call('HGETALL', KEYS[i])}))
        end
        released = released + 1
    end
end
if queued > 0 then
    wake(KEYS[3])
end
return released
