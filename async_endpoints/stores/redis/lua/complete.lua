-- complete.lua: finish a held job Completed (Canceled if cancel was requested).
--
-- KEYS[1]  "{prefix}:", the hash tag and colon every key name starts with: the
--          script names its keys from it (K below), so that a call carries
--          no key names; they all share the tag, hence the Cluster slot. On a
--          Cluster, KEYS[2..] repeat the names of K, unused here: Redis decides
--          by the declared keys whether a moving slot answers ASK or TRYAGAIN.
--
-- K[1]  the job's hash        {prefix}:job:<id>  (finished, then EXPIREd)
-- K[2]  the leases zset       {prefix}:claimed   (id removed; a job held is
--          never also waiting, so the waiting-jobs zset is not touched)
-- K[3]  the record of the claim request that took the job
--          {prefix}:req:<request id> (the token up to its last ':') (deleted: completing one of its jobs shows
--          that the claim's reply arrived, so it will not be sent again)
-- K[4]  the callbacks zset    {prefix}:callbacks (id added, due at once, when
--          the job has a callback URL: field cu)
-- K[5]  the status indexes' prefix "{prefix}:ix:s:" (the id enters the final
--          status's index of its handler, K[5] .. status .. ':' .. name,
--          score = field c; running jobs have no status index but K[2])
-- K[6]  the finished-per-minute counts {prefix}:ix:finished (hash; the
--          field floor(now / 60) raised by one)
-- K[7]  the running counts {prefix}:running (hash; a handler with a
--          concurrency limit, field cc, runs one job fewer)
-- K[8]  the parked jobs' prefix "{prefix}:parked:" (one of the handler's
--          parked jobs, if any, moves back to K[9], and K[10] is woken)
-- K[9]  the waiting-jobs zset {prefix}:ready
-- K[10] the wake-up list      {prefix}:wake
-- K[11] the handlers' index prefix "{prefix}:ix:n:" (of jobs not finished:
--          the id leaves K[11] .. name)
-- K[12] the names of the handlers with finished jobs {prefix}:ix:names (set;
--          the name added)
--
-- ARGV[1]  the job id
-- ARGV[2]  the claim token (fencing: must be the job's current token)
-- ARGV[3]  now, epoch seconds (float string)
-- ARGV[4]  the result as JSON, or '' for null
-- ARGV[5]  ttl of the finished job, whole seconds (integer >= 1)
--
-- Channels (not keys): the job's end channel {prefix}:ended:<id> is PUBLISHed to
-- when somebody waits for the end (field lp, set by await.lua), so that
-- long-polling readers wake; a job that somebody follows (field ev) is PUBLISHed
-- to the events channel {prefix}:events after the change, as JSON [id, its hash
-- HGETALL-style].
--
-- Every change raises the field v (the job's version) by one.
--
-- Returns 1 if applied, 0 if the token or status no longer match. The field lt
-- keeps "c" .. the token's first 8 characters (of its request id: unique among
-- a job's attempts) of the completion that ended the job, so that the same call
-- sent again (its reply was lost) also answers 1 and changes nothing.
local P = KEYS[1]
local K = {P .. 'job:' .. ARGV[1], P .. 'claimed',
    P .. 'req:' .. (string.match(ARGV[2], '^(.*):') or ''), P .. 'callbacks',
    P .. 'ix:s:', P .. 'ix:finished', P .. 'running', P .. 'parked:', P .. 'ready',
    P .. 'wake', P .. 'ix:n:', P .. 'ix:names'}

local held = redis.call('HMGET', K[1], 's', 't', 'k', 'lt', 'v', 'ev', 'cu', 'c',
    'cc', 'n', 'lp')
local name = held[10] or ''  -- a record without one: '' (it still ends)
if held[1] ~= 'InProgress' or held[2] ~= ARGV[2] then
    return held[4] == 'c' .. string.sub(ARGV[2], 1, 8) and 1 or 0
end
local status = held[3] and 'Canceled' or 'Completed'
local stored = status == 'Completed' and ARGV[4] ~= ''
-- u (last updated) goes: a finished job's is its end, e (one field less to keep).
redis.call('HDEL', K[1], 'r', 'x', 't', 'w', 'd', 'hb', 'u', 'pv')
local fields = {'s', status, 'e', ARGV[3],
    'lt', 'c' .. string.sub(ARGV[2], 1, 8), 'v', (tonumber(held[5]) or 0) + 1}
if stored then
    fields[#fields + 1] = 'r'
    fields[#fields + 1] = ARGV[4]
end
redis.call('HSET', K[1], unpack(fields))
redis.call('ZREM', K[2], ARGV[1])
redis.call('ZADD', K[5] .. status .. ':' .. name, tonumber(held[8]) or 0, ARGV[1])
redis.call('ZREM', K[11] .. name, ARGV[1])
redis.call('SADD', K[12], name)
redis.call('HINCRBY', K[6], math.floor(tonumber(ARGV[3]) / 60), 1)
redis.call('DEL', K[3])
if held[9] then  -- a slot of a limited handler frees: one parked job back
    free_slot(K[7], K[8], held[10], K[9], K[10])
end

redis.call('EXPIRE', K[1], ARGV[5])
if held[7] then
    redis.call('ZADD', K[4], 0, ARGV[1])
end
if held[11] then  -- somebody waits for its end (await.lua)
    redis.call('PUBLISH', P .. 'ended:' .. ARGV[1], status)
end
if held[6] then
    redis.call('PUBLISH', P .. 'events',
        cjson.encode({ARGV[1], redis.call('HGETALL', K[1])}))
end
return 1
