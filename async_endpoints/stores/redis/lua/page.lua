-- page.lua: one page of jobs from an index, newest first, dropping the entries
-- of jobs that are gone (expired or deleted) as it meets them.
--
-- KEYS[1]  the index to read: a zset of job ids by creation time, e.g.
--          {prefix}:ix:s:<status>, {prefix}:ix:n:<name>, {prefix}:ix:o:<owner>
-- KEYS[2]  the job key prefix "{prefix}:job:" (each id's hash is KEYS[2] .. id:
--          same hash tag, so the same Cluster slot)
--
-- ARGV[1]  the cursor's score: creation time, epoch seconds (float string) of
--          the last job of the previous page, or '+inf' for the first page
-- ARGV[2]  the cursor's id: the last job of the previous page, or ''
-- ARGV[3]  limit: the most jobs to return (integer > 0)
-- ARGV[4]  the status the jobs must have, or '' for any
-- ARGV[5]  the handler name the jobs must have, or '' for any
-- ARGV[6]  the owner the jobs must have, or '' for any
-- ARGV[7]  budget: the most index entries to look at (integer >= limit); a page
--          that runs out of it is shorter, and says where to go on
--
-- Returns {more, score, id, fields, score, id, fields, ...}: more is 1 when the
-- index holds entries after the last one looked at (then its score and id are
-- the cursor of the next page: the last pair returned, or, when the budget ran
-- out first, the last entry looked at, in the two fields after more), else 0.

local limit, budget = tonumber(ARGV[3]), tonumber(ARGV[7])
local max, after = ARGV[1], ARGV[2]
local out = {0, '', ''}
local seen, found = 0, 0
local last_score, last_id = nil, nil
while found < limit and seen < budget do
    local want = math.min(budget - seen, limit - found + 10)
    local batch = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, '-inf', 'WITHSCORES',
        'LIMIT', 0, want + 64)
    if #batch == 0 then
        return out
    end
    local progressed = false
    for i = 1, #batch, 2 do
        local id, score = batch[i], batch[i + 1]
        -- Entries with the cursor's own score come back again: skip up to it
        -- (ids of equal score come in reverse order).
        local skip = after ~= '' and tonumber(score) == tonumber(max) and id >= after
        if not skip then
            progressed = true
            seen = seen + 1
            last_score, last_id = score, id
            local fields = redis.call('HGETALL', KEYS[2] .. id)
            if #fields == 0 then
                redis.call('ZREM', KEYS[1], id)
            else
                local ok = true
                if ARGV[4] ~= '' or ARGV[5] ~= '' or ARGV[6] ~= '' then
                    local f = {}
                    for j = 1, #fields, 2 do
                        f[fields[j]] = fields[j + 1]
                    end
                    ok = (ARGV[4] == '' or f['s'] == ARGV[4])
                        and (ARGV[5] == '' or f['n'] == ARGV[5])
                        and (ARGV[6] == '' or f['o'] == ARGV[6])
                end
                if ok then
                    out[#out + 1] = score
                    out[#out + 1] = id
                    out[#out + 1] = fields
                    found = found + 1
                end
            end
            if found >= limit or seen >= budget then
                break
            end
        end
    end
    if not progressed then
        return out  -- only the cursor's equals were left
    end
    max, after = last_score, last_id
end
-- Is there anything after the last entry looked at?
local rest = redis.call('ZREVRANGEBYSCORE', KEYS[1], last_score, '-inf', 'WITHSCORES',
    'LIMIT', 0, 64)
for i = 1, #rest, 2 do
    if not (tonumber(rest[i + 1]) == tonumber(last_score) and rest[i] >= last_id) then
        out[1] = 1
        out[2] = last_score
        out[3] = last_id
        return out
    end
end
return out
