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
-- The page starts right after the cursor's entry, found by its rank; if that
-- entry left the index, after the entries with a higher score and, among those
-- with the cursor's score, after its id (ids of equal score come in reverse
-- order). Any number of jobs may share a score.
--
-- Returns {more, score, id, score, id, fields, score, id, fields, ...}: more is 1
-- when the index holds entries after the last one looked at (then the next two
-- are that entry's score and id: the next page's cursor), else 0 (and '', '').

local limit, budget = tonumber(ARGV[3]), tonumber(ARGV[7])
local out = {0, '', ''}
local rank = 0
local skip_from = nil  -- skip entries of the cursor's score whose id is >= this
if ARGV[2] ~= '' then
    local at = redis.call('ZREVRANK', KEYS[1], ARGV[2])
    if at then
        rank = at + 1
    else
        rank = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
        skip_from = ARGV[2]
    end
end
local cursor_score = tonumber(ARGV[1])
local seen, found = 0, 0
local last_score, last_id = nil, nil
local total = redis.call('ZCARD', KEYS[1])
while found < limit and seen < budget and rank < total do
    local batch = redis.call('ZREVRANGE', KEYS[1], rank,
        rank + math.min(budget - seen, limit - found + 16) - 1, 'WITHSCORES')
    if #batch == 0 then
        break
    end
    for i = 1, #batch, 2 do
        local id, score = batch[i], batch[i + 1]
        rank = rank + 1
        if skip_from and tonumber(score) == cursor_score and id >= skip_from then
            -- before the cursor in the order: already on an earlier page
        else
            skip_from = nil
            seen = seen + 1
            last_score, last_id = score, id
            local fields = redis.call('HGETALL', KEYS[2] .. id)
            if #fields == 0 then
                redis.call('ZREM', KEYS[1], id)
                rank = rank - 1
                total = total - 1
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
end
if last_id and rank < total then
    out[1] = 1
    out[2] = last_score
    out[3] = last_id
end
return out
