-- heartbeat.lua: renew the leases a worker still holds, in one step.
--
-- KEYS[1]    the leases zset  {prefix}:claimed   (scores of held ids raised)
-- KEYS[1+i]  the i-th claimed job's hash  {prefix}:job:<id>  (read only)
--
-- ARGV[1]      the new lease end on Redis's clock, epoch seconds (float string)
-- ARGV[#ARGV-1]  now on Redis's clock (float string): a lease that ended by then
--                is lost, not renewed
-- ARGV[#ARGV]    when the call was sent, on Redis's clock, read from the real
--                wall clock: a call that runs later than that (held up by the
--                network, or its process paused; more than 0.5 s) judges leases
--                that much later, so a late heartbeat revives no lease that ended
-- ARGV[2i]     the i-th claim's job id
-- ARGV[2i+1]   the i-th claim's token
--
-- A renewed job's field pv (a provisional claim: see claim.lua) is removed.
--
-- Returns one integer per claim, in order: 0 = lost (token or status no longer
-- match), 1 = renewed, 2 = renewed and its cancellation was requested.

local out = {}
local t = redis.call('TIME')
local late = t[1] + t[2] / 1000000 - tonumber(ARGV[#ARGV])
local now = tonumber(ARGV[#ARGV - 1])
if late > 0.5 then  -- not a round trip's worth: held up
    now = now + late
end
for i = 2, #KEYS do
    local id, token = ARGV[2 * (i - 1)], ARGV[2 * (i - 1) + 1]
    local held = redis.call('HMGET', KEYS[i], 's', 't', 'k', 'pv')
    local ends = tonumber(redis.call('ZSCORE', KEYS[1], id) or '0')
    if held[1] == 'InProgress' and held[2] == token and ends > now then
        redis.call('ZADD', KEYS[1], ARGV[1], id)
        if held[4] then  -- its worker has the claim: no longer provisional
            redis.call('HDEL', KEYS[i], 'pv')
        end
        out[#out + 1] = held[3] and 2 or 1
    else
        out[#out + 1] = 0
    end
end
return out
