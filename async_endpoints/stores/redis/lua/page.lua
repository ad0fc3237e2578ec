-- page.lua: one page of jobs from one or more indexes, merged, newest first,
-- dropping the entries of jobs that are gone (expired or deleted) as it meets
-- them. Only the jobs it looks at are read: a page of 20 jobs merged from 12
-- indexes reads 20 hashes (plus those filtered out), not 12 pages of them.
--
-- KEYS[1]  the job key prefix "{prefix}:job:" (each id's hash is KEYS[1] .. id:
--          same hash tag, so the same Cluster slot)
-- KEYS[2..] the indexes to read: zsets of job ids by creation time, e.g.
--          {prefix}:ix:s:<status>, {prefix}:ix:s:<status>:<name>,
--          {prefix}:ix:n:<name>, {prefix}:ix:o:<owner>
--
-- ARGV[1]  the cursor's score: creation time, epoch seconds (float string) of
--          the last job the previous page looked at, or '+inf' for the first page
-- ARGV[2]  the cursor's id: the last job the previous page looked at, or ''
-- ARGV[3]  limit: the most jobs to return (integer > 0)
-- ARGV[4]  the status the jobs must have, or '' for any
-- ARGV[5]  the handler name the jobs must have, or '' for any
-- ARGV[6]  the owner the jobs must have, or '' for any
-- ARGV[7]  budget: the most index entries to look at (integer >= limit); a page
--          that runs out of it is shorter, and says where to go on
--
-- The order is (score, id), highest first: what ZREVRANGE gives in each index.
-- In each index the page starts after the cursor's entry, found by its rank; if
-- that entry is not there, after the entries with a higher score and, among
-- those with the cursor's score, after its id. Any number of jobs may share a
-- score. An id in several indexes is looked at once.
--
-- Returns {more, score, id, score, id, fields, score, id, fields, ...}: more is 1
-- when an index holds entries after the last one looked at (then the next two
-- are that entry's score and id: the next page's cursor), else 0 (and '', '').

local limit, budget = tonumber(ARGV[3]), tonumber(ARGV[7])
local cursor_score = tonumber(ARGV[1])
local filtered = ARGV[4] ~= '' or ARGV[5] ~= '' or ARGV[6] ~= ''

-- Per index: its next rank, the entries fetched and not yet looked at, whether
-- entries of the cursor's score with an id at or above the cursor's are to be
-- skipped (the cursor's entry is not in it), and whether it is used up.
local heads = {}
for k = 2, #KEYS do
    local head = {key = KEYS[k], rank = 0, buf = {}, pos = 1, skip = false,
        total = redis.call('ZCARD', KEYS[k])}
    if ARGV[2] ~= '' then
        local at = redis.call('ZREVRANK', KEYS[k], ARGV[2])
        if at then
            head.rank = at + 1
        else
            head.rank = redis.call('ZCOUNT', KEYS[k], '(' .. ARGV[1], '+inf')
            head.skip = true
        end
    end
    heads[#heads + 1] = head
end

-- The head's next entry {score, id} (fetching more when its buffer is empty), or
-- nil when the index has no more.
local function peek(head)
    while true do
        if head.pos > #head.buf then
            if head.rank >= head.total then
                return nil
            end
            local batch = redis.call('ZREVRANGE', head.key, head.rank,
                head.rank + limit, 'WITHSCORES')
            if #batch == 0 then
                head.total = head.rank
                return nil
            end
            head.buf, head.pos = {}, 1
            for i = 1, #batch, 2 do
                head.buf[#head.buf + 1] = {tonumber(batch[i + 1]), batch[i], batch[i + 1]}
            end
            head.rank = head.rank + #batch / 2
        end
        local entry = head.buf[head.pos]
        if head.skip and entry[1] == cursor_score and entry[2] >= ARGV[2] then
            head.pos = head.pos + 1  -- before the cursor: on an earlier page
        else
            head.skip = false
            return entry
        end
    end
end

local function after(a, b)  -- whether a comes first (higher) in the order
    return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end

local out = {0, '', ''}
local seen, found, looked = 0, 0, {}
local last = nil
while found < limit and seen < budget do
    local best, best_head = nil, nil
    for _, head in ipairs(heads) do
        local entry = peek(head)
        if entry and (not best or after(entry, best)) then
            best, best_head = entry, head
        end
    end
    if not best then
        break
    end
    best_head.pos = best_head.pos + 1
    local id = best[2]
    if not looked[id] then
        looked[id] = true
        seen = seen + 1
        last = best
        local fields = redis.call('HGETALL', KEYS[1] .. id)
        if #fields == 0 then
            redis.call('ZREM', best_head.key, id)
            best_head.rank = best_head.rank - 1
            best_head.total = best_head.total - 1
        else
            local ok = true
            if filtered then
                local f = {}
                for j = 1, #fields, 2 do
                    f[fields[j]] = fields[j + 1]
                end
                ok = (ARGV[4] == '' or f['s'] == ARGV[4])
                    and (ARGV[5] == '' or f['n'] == ARGV[5])
                    and (ARGV[6] == '' or f['o'] == ARGV[6])
            end
            if ok then
                out[#out + 1] = best[3]
                out[#out + 1] = id
                out[#out + 1] = fields
                found = found + 1
            end
        end
    end
end
if last then
    for _, head in ipairs(heads) do
        if peek(head) then
            out[1] = 1
            out[2] = last[3]
            out[3] = last[2]
            break
        end
    end
end
return out
