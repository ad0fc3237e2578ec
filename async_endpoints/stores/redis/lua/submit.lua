-- submit.lua: store a new job as Queued and wake one idle worker, atomically.
--
-- KEYS[1]  "{prefix}:", the hash tag and colon every key name starts with: the
--          script names its keys from it (K below), so that a call carries
--          no key names; they all share the tag, hence the Cluster slot. On a
--          Cluster, KEYS[2..] repeat the names of K, unused here: Redis decides
--          by the declared keys whether a moving slot answers ASK or TRYAGAIN.
--
-- K[1]  the new job's hash              {prefix}:job:<id>   (created)
-- K[2]  the waiting-jobs zset           {prefix}:ready      (id added, score =
--          due, or a fair-claims tag: ARGV[11])
-- K[3]  the wake-up list                {prefix}:wake       (one token pushed)
-- K[4]  the idempotency key  {prefix}:idem:<key> (read, then SET), used only
--          when ARGV[4] is not ''
-- K[5]  the job key prefix "{prefix}:job:": the job an idempotency key names
--          is learnt only here, so its hash is read as K[5] .. id (same hash
--          tag, so the same Cluster slot).
-- K[6]  the new job's status index {prefix}:ix:s:Queued (or Scheduled: id
--          added, score = ARGV[7])
-- K[7]  the handler's index      {prefix}:ix:n:<name> (id added)
-- K[8]  the owner's index        {prefix}:ix:o:<owner> (id added when ARGV[6]
--          is not '')
-- K[9]  the set of owners' index keys {prefix}:ix:owners (K[8] added, when
--          ARGV[6] is not '': the sweeper prunes each)
-- K[10] the periodic jobs' last ticks {prefix}:ticks (hash: name -> "<tick>
--          <job id>", or "<tick>" for a first tick that made no job), used
--          only when ARGV[9] is not ''
-- K[11] the owner's waiting jobs {prefix}:ow:<owner> (zset; id added when
--          ARGV[6] is not '': its size is the owner's Queued + Scheduled count)
-- K[12] the status indexes' prefix "{prefix}:ix:s:" (the Queued and
--          Scheduled indexes count the waiting jobs, for the queue limit)
-- K[13] the fair-claims state {prefix}:fair (zset: 'v' scored by the tag
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
-- ARGV[8]  the periodic job's name (the field of K[10]), or ''
-- ARGV[9]  the tick this job is for, epoch seconds (float string), or '': the
--          job is created only if the schedule's last tick is older, and the
--          tick becomes the last; a schedule seen for the first time records
--          the tick and creates nothing (it starts with its next tick)
-- ARGV[10] the most jobs one owner may have waiting (integer; 0 = no limit)
-- ARGV[11] '1' when the job is due at once (Queued): it enters K[2] with a
--          fair-claims tag instead of its due time (see claim.lua), else ''
-- ARGV[12] the idempotency key as the caller scopes it (K[4] is {prefix}:idem:
--          .. it), or ''
-- ARGV[13] the job's handler name (K[7] is {prefix}:ix:n: .. it)
-- ARGV[14..] the job hash as field, value, field, value ... (status Queued, or
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
local P = KEYS[1]
local status = ARGV[11] == '1' and 'Queued' or 'Scheduled'
local K = {P .. 'job:' .. ARGV[3], P .. 'ready', P .. 'wake', P .. 'idem:' .. ARGV[12],
    P .. 'job:', P .. 'ix:s:' .. status, P .. 'ix:n:' .. ARGV[13],
    P .. 'ix:o:' .. ARGV[6], P .. 'ix:owners', P .. 'ticks', P .. 'ow:' .. ARGV[6],
    P .. 'ix:s:', P .. 'fair'}

-- A tick first: the tick, not the job's id, says whether it is new (another
-- process may have made this tick's job already).
if ARGV[9] ~= '' then
    local last = redis.call('HGET', K[10], ARGV[8])
    local tick = last and tonumber(string.match(last, '^(%S+)'))
    if not tick or tick >= tonumber(ARGV[9]) then
        if not last then
            redis.call('HSET', K[10], ARGV[8], ARGV[9])
        end
        return {-3}
    end
    redis.call('HSET', K[10], ARGV[8], ARGV[9] .. ' ' .. ARGV[3])
end

if redis.call('EXISTS', K[1]) == 1 then
    return {0}
end

if ARGV[4] ~= '' then
    local known = redis.call('GET', K[4])
    if known then
        local id = string.sub(known, 1, 36)
        local fields = redis.call('HGETALL', K[5] .. id)
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
    -- Every waiting job, parked ones included (they are not in K[2]).
    local waiting = redis.call('ZCARD', K[12] .. 'Queued')
        + redis.call('ZCARD', K[12] .. 'Scheduled')
    if waiting >= limit then
        return {-1}
    end
end
local per_owner = tonumber(ARGV[10])
if per_owner > 0 and ARGV[6] ~= '' and redis.call('ZCARD', K[11]) >= per_owner then
    return {-4}
end

redis.call('HSET', K[1], unpack(ARGV, 14))
local score = ARGV[2]
if ARGV[11] == '1' then
    -- Round robin between owners: one more than the owner's latest tag, and
    -- never behind the job claimed last. Tags score below every due time
    -- (tag - 1e12), so a tagged job is taken before any still scored by time.
    local group = 'o:' .. ARGV[6]
    local known = fair('ZMSCORE', K[13], 'v', group)
    local tag = math.max(tonumber(known[1] or '0'), tonumber(known[2] or '0')) + 1
    fair('ZADD', K[13], string.format('%d', tag), group)
    score = string.format('%d', tag - 1e12)
end
redis.call('ZADD', K[2], score, ARGV[3])
redis.call('ZADD', K[6], ARGV[7], ARGV[3])
redis.call('ZADD', K[7], ARGV[7], ARGV[3])
if ARGV[6] ~= '' then
    redis.call('ZADD', K[8], ARGV[7], ARGV[3])
    redis.call('SADD', K[9], K[8])
    redis.call('ZADD', K[11], ARGV[2], ARGV[3])
end
if ARGV[4] ~= '' then
    redis.call('SET', K[4], ARGV[4], 'PX', ARGV[5])
end
wake(K[3])
return {0}
