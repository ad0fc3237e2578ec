-- _prelude.lua: functions the transition scripts share, put before each
-- script's own text when the store registers it (see keys._script_source). They
-- use no KEYS or ARGV of their own: every key they touch is an argument, and
-- they read and write no instant (epoch seconds). Returns nothing.

-- One wake-up token for an idle worker on `list`; the list is cut to 32 tokens
-- when a push passes 64 (one LTRIM per 32 pushes while no worker is idle).
local function wake(list)
    if redis.call('LPUSH', list, '1') > 64 then
        redis.call('LTRIM', list, 0, 31)
    end
end

-- The first of handler `name`'s parked jobs (zset parked_prefix .. name: waiting
-- for a slot of its concurrency limit) goes back to `ready` with its score, and
-- an idle worker on `wake_list` is woken for it.
local function unpark_one(parked_prefix, name, ready, wake_list)
    local back = redis.call('ZPOPMIN', parked_prefix .. name)
    if back[1] then
        redis.call('ZADD', ready, back[2], back[1])
        wake(wake_list)
    end
end

-- A job of the concurrency-limited handler `name` stopped running: its slot is
-- given back (hash `running`: name -> jobs running, never below 0) and one
-- parked job goes back to `ready`.
local function free_slot(running, parked_prefix, name, ready, wake_list)
    if redis.call('HINCRBY', running, name, -1) < 0 then
        redis.call('HSET', running, name, 0)
    end
    unpark_one(parked_prefix, name, ready, wake_list)
end

-- Lease the running job `id` (hash `key`) anew, to `worker` under `token`,
-- until `lease_end` in the leases zset `leases`; its id, token and hash
-- (HGETALL-style) are appended to `out`, as the recovering scripts reply. A
-- claim still provisional (field pv = its token: taken behind a wait, and its
-- worker never said it had the reply) stays so under the new token, so that
-- the caller hands the job back rather than charge it an attempt.
local function relet(out, key, id, token, worker, leases, lease_end)
    local was = redis.call('HMGET', key, 't', 'pv')
    if was[2] and was[2] == was[1] then
        redis.call('HSET', key, 't', token, 'w', worker, 'pv', token)
    else
        redis.call('HSET', key, 't', token, 'w', worker)
    end
    redis.call('ZADD', leases, lease_end, id)
    out[#out + 1] = id
    out[#out + 1] = token
    out[#out + 1] = redis.call('HGETALL', key)
end

-- A command on the fair-claims sorted set (its key is the command's first
-- argument). A hash of the layout before (the same members, tags as values)
-- fails with WRONGTYPE: it is turned into the sorted set once, then the command
-- runs again. redis.pcall costs no more than redis.call when nothing fails.
local function fair(...)
    local reply = redis.pcall(...)
    if type(reply) == 'table' and reply.err then
        local key = select(2, ...)
        if redis.call('TYPE', key)['ok'] == 'hash' then
            local flat = redis.call('HGETALL', key)
            redis.call('DEL', key)
            for i = 1, #flat, 2 do
                redis.call('ZADD', key, flat[i + 1], flat[i])
            end
        end
        reply = redis.call(...)  -- any other error is raised here
    end
    return reply
end
