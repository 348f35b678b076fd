--[[
  What the den status page reads, bounded whatever a hostile writer put in
  Redis: at most ARGV[2] den members (ids no longer than ARGV[5]), and only
  registry records no longer than ARGV[3] bytes, checked with HSTRLEN before
  a value is read. One round trip; read-only.

  Input:
    KEYS[1] den set          den:<den>:online_agents
    KEYS[2] registry hash    global:agent_registry
    ARGV[1] den id (records naming it are candidates)
    ARGV[2] max rows
    ARGV[3] max record bytes
    ARGV[4] registry scan limit: above this many entries only the listed ids are looked up
    ARGV[5] max id bytes
    ARGV[6..] ids to list first when they are members, and to look up (this agent, agents of recent membership events)

  Output:
    {den set size, n, id_1 .. id_n, id, record, id, record, ...}
    the den set's size, up to max-rows of its members, then (id, record)
    pairs: records of those members, then up to max-rows other records
    that mention the den
]]
local den = ARGV[1]
local maxRows = tonumber(ARGV[2])
local maxRecord = tonumber(ARGV[3])
local scanLimit = tonumber(ARGV[4])
local maxId = tonumber(ARGV[5])

local size = redis.call('SCARD', KEYS[1])
local members, inDen = {}, {}
-- The named ids first (this agent, agents of recent events), so a den bigger than max rows still lists them.
for i = 6, #ARGV do
  local id = ARGV[i]
  if #members < maxRows and not inDen[id] and redis.call('SISMEMBER', KEYS[1], id) == 1 then
    members[#members + 1] = id
    inDen[id] = true
  end
end
local cursor, scanned = '0', 0
repeat
  local r = redis.call('SSCAN', KEYS[1], cursor, 'COUNT', 100)
  cursor = r[1]
  for _, id in ipairs(r[2]) do
    scanned = scanned + 1
    if #id <= maxId and #members < maxRows and not inDen[id] then
      members[#members + 1] = id
      inDen[id] = true
    end
  end
until cursor == '0' or #members >= maxRows or scanned >= maxRows * 20

local out = {size, #members}
for _, id in ipairs(members) do out[#out + 1] = id end

local others = 0
local function take(id, rec)
  if inDen[id] then
    out[#out + 1] = id
    out[#out + 1] = rec
  elseif others < maxRows and string.find(rec, den, 1, true) then
    others = others + 1
    out[#out + 1] = id
    out[#out + 1] = rec
  end
end

-- HKEYS, HSTRLEN, then HGET: a record's value is copied only when it is small
-- (HSCAN and HGETALL would copy every value, however big).
local function lookup(id)
  if #id <= maxId and redis.call('HSTRLEN', KEYS[2], id) <= maxRecord then
    local rec = redis.call('HGET', KEYS[2], id)
    if rec then take(id, rec) end
  end
end
if redis.call('HLEN', KEYS[2]) <= scanLimit then
  for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do lookup(id) end
else
  local seen = {}
  for _, id in ipairs(members) do
    seen[id] = true
    lookup(id)
  end
  for i = 6, #ARGV do
    if not seen[ARGV[i]] then
      seen[ARGV[i]] = true
      lookup(ARGV[i])
    end
  end
end
return out
