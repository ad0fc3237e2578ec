-- submit.lua: store a new job as Queued and wake one idle worker, atomically.
--
-- KEYS[1]  the new job's hash              {prefix}:job:<id>   (created)
-- KEYS[2]  the waiting-jobs zset           {prefix}:ready      (id added, score =
--          due, or a fair-claims tag: ARGV[11])
-- KEYS[3]  the wake-up list                {prefix}:wake       (one token pushed)
-- KEYS[4]  the idempotency key  {prefix}:idem:<key> (read, then SET), used only
--          when ARGV[4] is not ''
-- KEYS[5]  the job key prefix "{prefix}:job:": the job an idempotency key names
--          is learnt only here, so its hash is read as KEYS[5] .. id (same hash
--          tag, so the same Cluster slot).
-- KEYS[6]  the new job's status index {prefix}:ix:s:Queued (or Scheduled: id
--          added, score = ARGV[7])
-- KEYS[7]  the handler's index      {prefix}:ix:n:<name> (id added)
-- KEYS[8]  the owner's index        {prefix}:ix:o:<owner> (id added when ARGV[6]
--          is not '')
-- KEYS[9]  the set of owners' index keys {prefix}:ix:owners (KEYS[8] added, when
--          ARGV[6] is not '': the sweeper prunes each)
-- KEYS[10] the periodic jobs' last ticks {prefix}:ticks (hash: name -> "<tick>
--          <job id>", or "<tick>" for a first tick that made no job), used
--          only when ARGV[9] is not ''
-- KEYS[11] the owner's waiting jobs {prefix}:ow:<owner> (zset; id added when
--          ARGV[6] is not '': its size is the owner's Queued + Scheduled count)
-- KEYS[12] the status indexes' prefix "{prefix}:ix:s:" (the Queued and
--          Scheduled indexes count the waiting jobs, for the queue limit)
-- KEYS[13] the fair-claims state {prefix}:fair (zset: 'v' scored by the tag
--          of the latest claimed job, 'o:' .. owner by the owner's latest tag;
--          the jobs without an owner are the group 'o:')
--
-- ARGV[1]  max_queue_size (integer; 0 = no limit)
-- ARGV[2]  the due time on Redis's clock, epoch seconds (float string): the
--          zset score (hash times are the caller's, in the fields)
-- ARGV[3]  the new job's id (UUID string)
-- ARGV[4]  the idempotency record "<job id>:<fingerprint>", or '' for none
-- ARGV[5]  the idempotency ttl, milliseconds (integer; '' without a record)
-- ARGV[6]  the owner, or ''
-- ARGV[7]  the creation time, epoch seconds (float string): the indexes' score
-- ARGV[8]  the periodic job's name (the field of KEYS[10]), or ''
-- ARGV[9]  the tick this job is for, epoch seconds (float string), or '': the
--          job is created only if the schedule's last tick is older, and the
--          tick becomes the last; a schedule seen for the first time records
--          the tick and creates nothing (it starts with its next tick)
-- ARGV[10] the most jobs one owner may have waiting (integer; 0 = no limit)
-- ARGV[11] '1' when the job is due at once (Queued): it enters KEYS[2] with a
--          fair-claims tag instead of its due time (see claim.lua), else ''
-- ARGV[12..] the job hash as field, value, field, value ... (status Queued, or
--          Scheduled when it is due later)
--
-- A re-sent call (its reply was lost and the client sent it again) finds the
-- job's hash and changes nothing: it answers as the first call did.
--
-- Returns {0} when created (the caller has the job already), {1, id, fields}
-- for an idempotent repeat (the existing job, its hash HGETALL-style), {-1} when
-- the queue is full, {-2} on an idempotency conflict, {-3} when the tick is not
-- newer than the schedule's last one (or was the first one seen), {-4} when the
-- owner already has ARGV[10] jobs waiting.

-- A tick first: the tick, not the job's id, says whether it is new (another
-- process may have made this tick's job already).
if ARGV[9] ~= '' then
    local last = redis.call('HGET', KEYS[10], ARGV[8])
    local tick = last and tonumber(string.match(last, '^(%S+)'))
    if not tick or tick >= tonumber(ARGV[9]) then
        if not last then
            redis.call('HSET', KEYS[10], ARGV[8], ARGV[9])
        end
        return {-3}
    end
    redis.call('HSET', KEYS[10], ARGV[8], ARGV[9] .. ' ' .. ARGV[3])
end

if redis.call('EXISTS', KEYS[1]) == 1 then
    return {0}
end

if ARGV[4] ~= '' then
    local known = redis.call('GET', KEYS[4])
    if known then
        local id = string.sub(known, 1, 36)
        local fields = redis.call('HGETALL', KEYS[5] .. id)
        if #fields > 0 then
            if string.sub(known, 38) ~= string.sub(ARGV[4], 38) then
                return {-2}
            end
            return {1, id, fields}
        end
    end
end

local limit = tonumber(ARGV[1])
if limit > 0 then
    -- Every waiting job, parked ones included (they are not in KEYS[2]).
    local waiting = redis.call('ZCARD', KEYS[12] .. 'Queued')
        + redis.call('ZCARD', KEYS[12] .. 'Scheduled')
    if waiting >= limit then
        return {-1}
    end
end
local per_owner = tonumber(ARGV[10])
if per_owner > 0 and ARGV[6] ~= '' and redis.call('ZCARD', KEYS[11]) >= per_owner then
    return {-4}
end

redis.call('HSET', KEYS[1], unpack(ARGV, 12))
local score = ARGV[2]
if ARGV[11] == '1' then
    -- Round robin between owners: one more than the owner's latest tag, and
    -- never behind the job claimed last. Tags score below every due time
    -- (tag - 1e12), so a tagged job is taken before any still scored by time.
    local group = 'o:' .. ARGV[6]
    local known = redis.call('ZMSCORE', KEYS[13], 'v', group)
    local tag = math.max(tonumber(known[1] or '0'), tonumber(known[2] or '0')) + 1
    redis.call('ZADD', KEYS[13], string.format('%d', tag), group)
    score = string.format('%d', tag - 1e12)
end
redis.call('ZADD', KEYS[2], score, ARGV[3])
redis.call('ZADD', KEYS[6], ARGV[7], ARGV[3])
redis.call('ZADD', KEYS[7], ARGV[7], ARGV[3])
if ARGV[6] ~= '' then
    redis.call('ZADD', KEYS[8], ARGV[7], ARGV[3])
    redis.call('SADD', KEYS[9], KEYS[8])
    redis.call('ZADD', KEYS[11], ARGV[2], ARGV[3])
end
if ARGV[4] ~= '' then
    redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[5])
end
wake(KEYS[3])
return {0}
