-- claim.lua: lease up to `limit` due waiting jobs to one worker, fairly between
-- owners.
--
-- Fair claims are start-time fair queuing. A job that is due gets a tag: one
-- more than the larger of its owner's latest tag and the tag of the job
-- claimed last ('v'); jobs without an owner are one owner. Claims take the
-- lowest tag first. So an owner with 10,000 waiting jobs has tags far ahead,
-- and a job of another owner submitted after them is tagged just after the
-- job claimed last: owners with waiting jobs take turns, and one owner's jobs
-- keep their order. A job due at once is tagged by submit.lua; a job that
-- falls due later (scheduled, retried, handed back, recovered, set aside by a
-- rate limit) is tagged here, up to `limit` + 100 of them per call, by due
-- time. In K[1] a tag scores tag - 1e12, below every due time.
--
-- KEYS[1]  "{prefix}:", the hash tag and colon every key name starts with: the
--          script names its keys from it (K below), so that a call carries
--          no key names; they all share the tag, hence the Cluster slot. On a
--          Cluster, KEYS[2..] repeat the names of K, unused here: Redis decides
--          by the declared keys whether a moving slot answers ASK or TRYAGAIN.
--
-- K[1]  the waiting-jobs zset   {prefix}:ready    (due ids removed)
-- K[2]  the leases zset         {prefix}:claimed  (ids added, score = lease end)
-- K[3]  the job key prefix      "{prefix}:job:"   the ids are learnt only
--          inside this step, so each job hash is K[3] .. id (same hash tag,
--          so the same Cluster slot); each claimed hash becomes InProgress.
-- K[4]  the request's record    {prefix}:req:<request id>  (string "id,id,..."
--          of the jobs this request claimed, PX = ARGV[7]; read, then SET)
-- K[5]  the status indexes' prefix "{prefix}:ix:s:" (a claimed id leaves
--          K[5] .. its old status; running jobs are listed from K[2])
-- K[6]  the owners' waiting-jobs prefix "{prefix}:ow:" (a claimed job with
--          an owner, field o, leaves K[6] .. owner)
-- K[7]  the rate logs' prefix "{prefix}:rate:" (K[7] .. name: a zset of the
--          claims of a rate-limited handler, field rl "N/W": at most N in any
--          W seconds; a job over it goes back to K[1], due when the window
--          lets it start)
-- K[8]  the running counts {prefix}:running (hash: name -> jobs running, for
--          handlers with a concurrency limit, field cc)
-- K[9]  the parked jobs' prefix "{prefix}:parked:" (K[9] .. name: a zset
--          of the waiting jobs of a handler whose every slot was taken; the end
--          of one of its jobs moves one back to K[1])
-- K[10] the fair-claims state {prefix}:fair (zset: 'v' scored by the
--          highest claimed tag, raised with ZADD GT; 'o:' .. owner by the
--          owner's latest tag, removed when that job is claimed)
--
-- ARGV[1]  now on Redis's clock, epoch seconds (float string): jobs whose score
--          is at or before it are taken
-- ARGV[2]  limit (integer > 0)
-- ARGV[3]  lease end on Redis's clock, epoch seconds (float string)
-- ARGV[4]  the request id (random hex, chosen by the caller and kept when it
--          sends the request again); the i-th claim's token is id .. ':' .. i
-- ARGV[5]  the claiming worker's name
-- ARGV[6]  now on the caller's clock (float string): the hash's times
-- ARGV[7]  how long the request's record is kept, milliseconds (integer)
-- ARGV[8]  '1' when the call was sent behind a BLPOP on the wake-up list, in
--          one round trip (wait_and_claim): it runs when the wait ends, so
--          ARGV[1], ARGV[3] and ARGV[6] are moved on by the time that passed
--          since it was sent (ARGV[9], on Redis's clock, read from the real
--          wall clock, which tests do not freeze), and nothing is claimed if
--          the worker stopped meanwhile (see below); else ''. A job claimed
--          behind a wait is provisional (field pv = its token) until its
--          worker's first heartbeat or its end: if the worker's host vanished
--          during the wait, nobody read the reply, and a recovery hands the
--          job back instead of charging it an attempt.
-- ARGV[9]  when the call was sent, on Redis's clock from the real wall clock
--          (with ARGV[8] only)
-- The events channel {prefix}:events (a channel, not a key): a claimed job that
-- somebody follows (field ev) is PUBLISHed there as JSON [id, its hash
-- HGETALL-style].
--
-- A request sent again (its reply was lost) claims nothing new: it answers with
-- the jobs the first call claimed that are still held under its tokens, their
-- leases (and the record) renewed to ARGV[3] (and ARGV[7]).
--
-- Returns {next_due, id, token, fields, id, token, fields, ...}: fields is the
-- claimed job's hash, HGETALL-style, as it was before the claim (a re-sent
-- request's: as it is now). next_due is ARGV[1] when jobs are left due, else
-- the score (Redis's clock) of the earliest job still waiting if known (always
-- when fewer than `limit` were claimed), else ''.
-- Ids in the zset whose hash is gone (or no longer waiting) are dropped.
local P = KEYS[1]
local K = {P .. 'ready', P .. 'claimed', P .. 'job:', P .. 'req:' .. ARGV[4],
    P .. 'ix:s:', P .. 'ow:', P .. 'rate:', P .. 'running', P .. 'parked:', P .. 'fair'}

-- The instants the call carries: moved on by the wait it was sent behind. A
-- worker that stopped meanwhile ({prefix}:stopped:<ARGV[5]> exists, set by
-- stop_waiting) claims nothing.
local out_none = {''}
local now, lease_end, stamp = ARGV[1], ARGV[3], ARGV[6]
local behind_wait = ARGV[8] == '1'
if behind_wait then
    if redis.call('EXISTS', P .. 'stopped:' .. ARGV[5]) == 1 then
        return out_none  -- the worker stopped during the wait
    end
    local t = redis.call('TIME')
    local late = tonumber(t[1]) + tonumber(t[2]) / 1e6 - tonumber(ARGV[9])
    if late > 0 then
        now = string.format('%.6f', tonumber(now) + late)
        lease_end = string.format('%.6f', tonumber(lease_end) + late)
        stamp = string.format('%.6f', tonumber(stamp) + late)
    end
end

local out = {''}
local done = redis.call('GET', K[4])
if done then
    local n = 0
    for id in string.gmatch(done, '[^,]+') do
        n = n + 1
        local key = K[3] .. id
        local token = ARGV[4] .. ':' .. n
        local held = redis.call('HMGET', key, 's', 't')
        if held[1] == 'InProgress' and held[2] == token then
            redis.call('ZADD', K[2], lease_end, id)
            out[#out + 1] = id
            out[#out + 1] = token
            out[#out + 1] = redis.call('HGETALL', key)
        end
    end
    redis.call('PEXPIRE', K[4], ARGV[7])
    return out
end

local limit = tonumber(ARGV[2])
local OFFSET = 1e12

-- Due jobs still scored by time get their tags first, earliest due first. The
-- same read finds the earliest job not yet due (`later`), the reply's next_due
-- when nothing due is left.
local window = limit + 100
local timed = redis.call('ZRANGEBYSCORE', K[1], 0, '+inf', 'WITHSCORES',
    'LIMIT', 0, window + 1)
local later = nil
local latest = {}
local vtime = nil
for i = 1, #timed, 2 do
    local id, score = timed[i], timed[i + 1]
    if tonumber(score) > tonumber(now) then
        later = score
        break
    end
    if i > 2 * window then
        break
    end
    if not vtime then
        vtime = tonumber(fair('ZSCORE', K[10], 'v') or '0')
    end
    local group = 'o:' .. (redis.call('HGET', K[3] .. id, 'o') or '')
    local last = latest[group]
    if not last then
        last = tonumber(fair('ZSCORE', K[10], group) or '0')
    end
    local tag = math.max(vtime, last) + 1
    latest[group] = tag
    redis.call('ZADD', K[1], string.format('%d', tag - OFFSET), id)
end
if vtime then
    -- The groups' new turns, 500 to a ZADD (unpack has a stack limit).
    local batch = {}
    for group, tag in pairs(latest) do
        batch[#batch + 1] = string.format('%d', tag)
        batch[#batch + 1] = group
        if #batch == 1000 then
            fair('ZADD', K[10], unpack(batch))
            batch = {}
        end
    end
    if #batch > 0 then
        fair('ZADD', K[10], unpack(batch))
    end
end
-- Whether `later` is the earliest job scored by time: not when the read was
-- full of due jobs (then more may follow, read again at the end if needed).
local known_later = #timed < 2 * (window + 1) or later ~= nil

local claimed = {}
local served = 0  -- the highest tag claimed
local n = 0
local examined = 0  -- bounded: a burst of limited jobs is set aside over claims
local drained = false  -- whether no due job is left in K[1]
while n < limit and examined < limit + 1000 do
    -- At most 1,000 a read: ZREM takes them unpacked (Lua's stack is limited).
    -- One more is read than is taken, to learn whether any is left due.
    local want = math.min(limit - n, 1000)
    local due = redis.call('ZRANGEBYSCORE', K[1], '-inf', now, 'WITHSCORES',
        'LIMIT', 0, want + 1)
    if #due == 0 then
        drained = true
        break
    end
    -- No more than asked: nothing else is due once these are handled (a job set
    -- aside by a rate limit goes back due later, a parked one elsewhere).
    drained = #due <= 2 * want
    local ids = {}
    for i = 1, math.min(#due, 2 * want), 2 do
        ids[#ids + 1] = due[i]
    end
    redis.call('ZREM', K[1], unpack(ids))
    for i, id in ipairs(ids) do
        local score = due[2 * i]
        examined = examined + 1
        local key = K[3] .. id
        -- The hash as it was: the caller applies the claim's changes to it (status
        -- InProgress, started and updated now, no due time), saving a read.
        local fields = redis.call('HGETALL', key)
        local status, version, watched, created, owner, handler, slots, rate
        for i = 1, #fields, 2 do
            local name = fields[i]
            if name == 's' then
                status = fields[i + 1]
            elseif name == 'o' then
                owner = fields[i + 1]
            elseif name == 'n' then
                handler = fields[i + 1]
            elseif name == 'cc' then
                slots = tonumber(fields[i + 1])
            elseif name == 'rl' then
                rate = fields[i + 1]
            elseif name == 'c' then
                created = fields[i + 1]
            elseif name == 'v' then
                version = fields[i + 1]
            elseif name == 'ev' then
                watched = true
            end
        end
        if not status then  -- the job is gone: so are its waiting entries
            redis.call('ZREM', K[5] .. 'Queued', id)
            redis.call('ZREM', K[5] .. 'Scheduled', id)
        end
        local admitted = status == 'Queued' or status == 'Scheduled'
        if admitted and slots then
            local running = tonumber(redis.call('HGET', K[8], handler) or '0')
            if running >= slots then
                redis.call('ZADD', K[9] .. handler, score, id)
                admitted = false
            end
        end
        if admitted and rate then
            local cap, span = string.match(rate, '^(%d+)/([%d.]+)$')
            cap, span = tonumber(cap), tonumber(span)
            local log = K[7] .. handler
            redis.call('ZREMRANGEBYSCORE', log, '-inf', tonumber(now) - span)
            if redis.call('ZCARD', log) >= cap then
                local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
                local at = tonumber(oldest[2]) + span
                redis.call('ZADD', K[1], at, id)
                if later == nil or at < tonumber(later) then
                    later = string.format('%.17g', at)
                end
                admitted = false
            else
                redis.call('ZADD', log, now, ARGV[4] .. ':' .. id)
                redis.call('PEXPIRE', log, math.ceil(span * 1000) + 1000)
            end
        end
        if admitted and slots then
            redis.call('HINCRBY', K[8], handler, 1)
        end
        if admitted then
            n = n + 1
            local token = ARGV[4] .. ':' .. n
            -- d (the due time) stays: it means nothing once the job is not waiting.
            local set = {'s', 'InProgress', 'b', stamp, 'u', stamp, 't', token,
                'w', ARGV[5], 'v', (tonumber(version) or 0) + 1}
            if behind_wait then
                set[#set + 1] = 'pv'
                set[#set + 1] = token
            end
            redis.call('HSET', key, unpack(set))
            if watched then
                redis.call('PUBLISH', P .. 'events',
                    cjson.encode({id, redis.call('HGETALL', key)}))
            end
            redis.call('ZADD', K[2], lease_end, id)
            redis.call('ZREM', K[5] .. status, id)
            if owner then
                redis.call('ZREM', K[6] .. owner, id)
            end
            local tag = tonumber(score) + OFFSET
            if tag < OFFSET then
                served = math.max(served, tag)
                if owner then  -- the owner's latest tag, once taken, is not needed
                    local group = 'o:' .. owner
                    local last = tonumber(fair('ZSCORE', K[10], group) or '0')
                    if last <= tag then
                        fair('ZREM', K[10], group)
                    end
                end
            end
            out[#out + 1] = id
            out[#out + 1] = token
            out[#out + 1] = fields
            claimed[n] = id
        end
    end
    if drained then
        break
    end
end
if n > 0 then
    redis.call('SET', K[4], table.concat(claimed, ','), 'PX', ARGV[7])
end
if served > 0 then
    fair('ZADD', K[10], 'GT', string.format('%d', served), 'v')
end
if n == limit then
    if not drained then
        out[1] = now  -- more jobs are due: the caller claims again at once
    elseif known_later and later then
        out[1] = later
    end
elseif n < limit then
    if not drained then
        out[1] = now  -- due jobs may be left (the examined bound was reached)
    elseif known_later then
        out[1] = later or ''
    else
        local first = redis.call('ZRANGE', K[1], 0, 0, 'WITHSCORES')
        if first[2] then
            out[1] = tonumber(first[2]) < 0 and now or first[2]
        end
    end
end
return out
