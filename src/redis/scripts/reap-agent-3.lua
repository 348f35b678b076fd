--[[
  Reaps an agent whose heartbeat has expired and announces it. Atomic, so
  however many watchers race on one death, exactly one of them reaps it and
  exactly one agent_down is published — even if that watcher dies right after.

  Input:
    KEYS[1] heartbeat key    agent:<id>:heartbeat
    KEYS[2] den set          den:<den>:online_agents
    KEYS[3] registry hash    global:agent_registry
    ARGV[1] agent id
    ARGV[2] now, unix ms (becomes downAt and the event's ts)
    ARGV[3] den of the dead agent
    ARGV[4] watcher's agent id (detectedBy, source)
    ARGV[5] watcher's den
    ARGV[6] detector: 'expiry' or 'sweep'
    ARGV[7] event id for the agent_down envelope
    ARGV[8] channel to publish agent_down on

  Output:
    {1, envelope}  this caller reaped the agent and published envelope
    {0, 'alive'}   the heartbeat key exists again: nothing done
    {0, 'absent'}  not in the den (it left, or another watcher reaped it)
]]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, 'alive'}
end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then
  return {0, 'absent'}
end
local now = tonumber(ARGV[2])
local host = cjson.null
local lastSeen = cjson.null
local raw = redis.call('HGET', KEYS[3], ARGV[1])
if raw then
  local ok, record = pcall(cjson.decode, raw)
  -- A record in somebody else's format is left as it is: the den set is what counts.
  if ok and type(record) == 'table' then
    if type(record['host']) == 'string' then host = record['host'] end
    if type(record['lastSeen']) == 'number' then lastSeen = record['lastSeen'] end
    record['status'] = 'down'
    record['downAt'] = now
    redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(record))
  end
end
local envelope = cjson.encode({
  event = 'agent_down',
  data = { agent = ARGV[1], den = ARGV[3], host = host, lastSeen = lastSeen, detectedBy = ARGV[4], via = ARGV[6] },
  id = ARGV[7],
  source = ARGV[4],
  ts = now,
  den = ARGV[5],
})
redis.call('PUBLISH', ARGV[8], envelope)
return {1, envelope}
