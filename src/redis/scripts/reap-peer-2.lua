--[[
  Reaps an agent that is dead by two signals and announces it. Atomic, so
  however many watchers race on one death, exactly one of them reaps it and
  exactly one agent_down is published — even if that watcher dies right after.

  Everything that can fail (decoding, encoding) runs before the first write,
  and the one write Redis may refuse — HSET, refused over maxmemory as the
  first write of a script — comes first: the script either fails before it
  has changed anything, or completes (SREM and PUBLISH are never refused for
  memory). No `#!lua` line, so it also runs on Redis 6.

  Dead means both: the heartbeat key is gone, AND the registry record's
  lastSeen (when it has a finite one) is at least ARGV[9] ms old. A heartbeat
  key that was deleted (a memory clear) rather than expired is not a death.
  agentd writes lastSeen in Redis time (its clock corrected by TIME) and
  passes ARGV[2] in Redis time too, so skewed machine clocks do not count; a
  lastSeen more than ARGV[9] ms in the future is a broken clock, not believed.

  The registry record is rewritten (status "down", downAt) only when the
  rewrite is lossless: cjson would turn [] into {}, cut numbers to 14 digits
  and cannot encode 1e999. A record it cannot rewrite exactly is left byte for
  byte; the agent still leaves its den and agent_down is still published.

  The heartbeat key is not a declared key: it is built here from the id
  (agent:<id>:heartbeat) and only read (EXISTS). Redis checks declared keys
  of EVAL for read AND write access, so declaring it would make a per-agent
  ACL user (docs/security.md) need write access to every peer's heartbeat;
  undeclared, a read-only grant (%R~agent:*:heartbeat) is enough.

  Input:
    KEYS[1] den set          den:<den>:online_agents
    KEYS[2] registry hash    global:agent_registry
    ARGV[1] agent id
    ARGV[2] now, unix ms (becomes downAt and the event's ts)
    ARGV[3] den of the dead agent
    ARGV[4] watcher's agent id (detectedBy, source)
    ARGV[5] watcher's den
    ARGV[6] detector: 'expiry' or 'sweep'
    ARGV[7] event id for the agent_down envelope
    ARGV[8] channel to publish agent_down on
    ARGV[9] minimum age of the record's lastSeen, ms (the watcher's heartbeat TTL; the
            record's own heartbeatTtl, in seconds, when it is shorter)
    ARGV[10] '1': no ghosts — a member whose registry record agentd did not write (absent,
             not a JSON object, no string "instance", or another "id") is removed from the
             den quietly: no agent_down, no record change (security.signing=require)
    ARGV[11] '1' when the caller read a registry record, '0' when it read none (with ARGV[13])
    ARGV[12] the record the caller read (with ARGV[13])
    ARGV[13] a signed agent_down envelope built by the caller from that record (empty: build
             it here, unsigned). Published instead of the script's own, and only if the
             record is still the one the caller read; otherwise {0, 'changed'}.
    ARGV[14] '1' when the watcher has itself seen the heartbeat key missing for at least
             ARGV[9] ms: the second signal for a member without a credible lastSeen (no record,
             a record that is not an object, a registry that was deleted or evicted); default '1'

  Output:
    {1, envelope, 'marked'|'kept'|'none'}  this caller reaped the agent and published envelope;
                                           the record was marked down, kept as it was, or absent
    {0, 'alive'}   the heartbeat key exists: nothing done
    {0, 'absent'}  not in the den (it left, or another watcher reaped it)
    {0, 'fresh'}   heartbeat key gone but lastSeen is recent: deleted, not expired; nothing done
    {0, 'unsure'}  no credible lastSeen and ARGV[14] is not '1': not yet; nothing done
    {0, 'changed'} the registry record is not the one the signed envelope was built from: nothing done
    {2, 'ghost'}   (ARGV[10] = '1') a member without an agentd record: removed from the den, nothing announced
]]
local id = ARGV[1]
if redis.call('EXISTS', 'agent:' .. id .. ':heartbeat') == 1 then
  return {0, 'alive'}
end
if redis.call('SISMEMBER', KEYS[1], id) == 0 then
  return {0, 'absent'}
end
local raw = redis.call('HGET', KEYS[2], id)
if ARGV[10] == '1' then
  local agentd = false
  if raw and string.match(raw, '^%s*{') then
    local ok, rec = pcall(cjson.decode, raw)
    agentd = ok and type(rec) == 'table' and type(rec['instance']) == 'string' and rec['id'] == id
  end
  if not agentd then
    -- The only write: SREM, which Redis allows over maxmemory.
    redis.call('SREM', KEYS[1], id)
    return {2, 'ghost'}
  end
end
local sealed = ARGV[13]
if sealed == nil or sealed == '' then
  sealed = nil
elseif (ARGV[11] == '1') ~= (raw ~= false) or (raw and raw ~= ARGV[12]) then
  return {0, 'changed'}
end
local now = tonumber(ARGV[2])
local minAge = tonumber(ARGV[9]) or 0

local function finite(x)
  return type(x) == 'number' and x == x and x ~= math.huge and x ~= -math.huge
end

-- Deep equality of two decoded values. Empty tables count as different:
-- cjson decodes [] and {} alike, so one of them would change on re-encoding.
local function same(a, b, depth)
  if type(a) ~= type(b) then return false end
  if type(a) ~= 'table' then return a == b end
  if depth > 64 or next(a) == nil then return false end
  for k, v in pairs(a) do
    if not same(v, b[k], depth + 1) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local host = cjson.null
local lastSeen = cjson.null
local rewritten = nil
local recordState = 'none'
local credible = false
if raw then
  recordState = 'kept'
  local ok, record = pcall(cjson.decode, raw)
  -- Only a JSON object is a record; anything else is somebody else's and stays.
  if ok and type(record) == 'table' and string.match(raw, '^%s*{') then
    if type(record['host']) == 'string' then host = record['host'] end
    if finite(record['lastSeen']) then lastSeen = record['lastSeen'] end
    -- The agent's own TTL when it states one and it is shorter: a short-TTL peer is reported on time.
    local ownTtl = record['heartbeatTtl']
    if finite(ownTtl) and ownTtl > 0 and ownTtl * 1000 < minAge then minAge = ownTtl * 1000 end
    -- A lastSeen further in the future than minAge is a broken clock, not a sign of life: not believed
    -- (else a dead agent whose clock ran ahead would never be reported).
    if lastSeen ~= cjson.null and lastSeen - now > minAge then
      credible = false
    elseif lastSeen ~= cjson.null then
      credible = true
      if now - lastSeen < minAge then
        return {0, 'fresh'}
      end
    end
    local original = cjson.decode(raw)
    record['status'] = 'down'
    record['downAt'] = now
    local okEncode, text = pcall(cjson.encode, record)
    if okEncode then
      local okBack, back = pcall(cjson.decode, text)
      if okBack and type(back) == 'table' and back['status'] == 'down' and back['downAt'] == now then
        back['status'] = original['status']
        back['downAt'] = original['downAt']
        if same(original, back, 0) then
          rewritten = text
        end
      end
    end
  end
end

if not credible and (ARGV[14] or '1') ~= '1' then
  return {0, 'unsure'}
end

local data = { agent = id, den = ARGV[3], host = host, lastSeen = lastSeen, detectedBy = ARGV[4], via = ARGV[6] }
local okEnvelope, envelope = pcall(cjson.encode, { event = 'agent_down', data = data, id = ARGV[7], source = ARGV[4], ts = now, den = ARGV[5] })
if not okEnvelope then
  data['host'] = cjson.null
  data['lastSeen'] = cjson.null
  envelope = cjson.encode({ event = 'agent_down', data = data, id = ARGV[7], source = ARGV[4], ts = now, den = ARGV[5] })
end

if sealed then envelope = sealed end

-- Writes only from here on. HSET first: over maxmemory it is refused before anything changed.
if rewritten then
  redis.call('HSET', KEYS[2], id, rewritten)
  recordState = 'marked'
end
redis.call('SREM', KEYS[1], id)
redis.call('PUBLISH', ARGV[8], envelope)
return {1, envelope, recordState}
