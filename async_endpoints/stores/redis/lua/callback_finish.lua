-- callback_finish.lua: record the outcome of a held callback delivery.
--
-- KEYS[1]  the job's hash       {prefix}:job:<id>  (cs, ce, v updated; ct removed)
-- KEYS[2]  the callbacks zset   {prefix}:callbacks (id removed, or due again)
--
-- ARGV[1]  the job id
-- ARGV[2]  the delivery's token (fencing: must be the job's field ct)
-- ARGV[3]  the outcome: 'Delivered', 'Failed' (no attempt left) or 'Retry'
-- ARGV[4]  why the attempt failed, or '' (then ce is removed)
--
-- No instant but ARGV[5] (epoch seconds): recording an outcome changes no time.
-- ARGV[5]  with 'Retry': when the next attempt is due, on Redis's clock, epoch
--          seconds (float string); else ''
--
-- Returns 1 if applied, 0 if the token no longer matches (the lease ended and
-- another worker took the delivery, or the job is gone).

local held = redis.call('HMGET', KEYS[1], 'ct', 'v')
if not held[1] or held[1] ~= ARGV[2] then
    return 0
end
redis.call('HDEL', KEYS[1], 'ct')
local fields = {'v', (tonumber(held[2]) or 0) + 1}
if ARGV[3] ~= 'Retry' then
    fields[#fields + 1] = 'cs'
    fields[#fields + 1] = ARGV[3]
end
if ARGV[4] ~= '' then
    fields[#fields + 1] = 'ce'
    fields[#fields + 1] = ARGV[4]
else
    redis.call('HDEL', KEYS[1], 'ce')
end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[3] == 'Retry' then
    redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
else
    redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
