-- register_worker.lua: record that a worker is alive; forget the silent ones.
--
-- KEYS[1]  the workers hash  {prefix}:workers  (worker name -> last heartbeat)
--
-- ARGV[1]  the worker's name
-- ARGV[2]  now on Redis's clock, epoch seconds (float string)
-- ARGV[3]  ttl, seconds: a worker unheard of for this long is removed
--
-- Returns the number of workers left in the hash.

redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local cutoff = tonumber(ARGV[2]) - tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
    if tonumber(all[i + 1]) <= cutoff then
        redis.call('HDEL', KEYS[1], all[i])
    end
end
return redis.call('HLEN', KEYS[1])
