--[[
  Lists the members of a den whose heartbeat key is gone: one round trip
  per den, whatever its size. Read-only.

  Input:
    KEYS[1] den set    den:<den>:online_agents
    ARGV[1] heartbeat key prefix   ('agent:')
    ARGV[2] heartbeat key suffix   (':heartbeat')

  Output:
    {count of members, id, id, ...}  the member count, then the ids without a heartbeat
]]
local members = redis.call('SMEMBERS', KEYS[1])
local out = {#members}
for _, id in ipairs(members) do
  if redis.call('EXISTS', ARGV[1] .. id .. ARGV[2]) == 0 then
    out[#out + 1] = id
  end
end
return out
