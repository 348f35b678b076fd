--[[
  Graceful leave of one daemon instance: out of the den, registry record
  offline, heartbeat deleted, agent_offline published — but only when the
  registry record belongs to this instance (its "instance" token is ours, or
  it has none). A twin with the same agent id (a cloned VM) that wrote the
  record keeps its presence.

  No `#!lua` line on purpose: the first write is SREM, which Redis allows over
  maxmemory, so a graceful leave still works when Redis is full.

  Input:
    KEYS[1] heartbeat key    agent:<id>:heartbeat
    KEYS[2] den set          den:<den>:online_agents
    KEYS[3] registry hash    global:agent_registry
    ARGV[1] agent id
    ARGV[2] this instance's token
    ARGV[3] the offline registry record (JSON)
    ARGV[4] channel to publish agent_offline on
    ARGV[5] the agent_offline envelope (JSON)

  Output:
    {1, 'left'}
    {0, raw record}  the record belongs to another instance: nothing done
]]
local raw = redis.call('HGET', KEYS[3], ARGV[1])
if raw then
  local ok, record = pcall(cjson.decode, raw)
  if ok and type(record) == 'table' and type(record['instance']) == 'string' and record['instance'] ~= ARGV[2] then
    return {0, raw}
  end
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {1, 'left'}
