--[[
  A random sample of a den's members, and how many of them lack a heartbeat
  key: the cheap mass-death check of the expiry path (O(sample), not O(den)).
  Read-only. A den no larger than the sample is counted exactly.

  Input:
    KEYS[1] den set    den:<den>:online_agents
    ARGV[1] heartbeat key prefix   ('agent:')
    ARGV[2] heartbeat key suffix   (':heartbeat')
    ARGV[3] sample size

  Output:
    {members, sampled, missing in the sample}
]]
local members = redis.call('SCARD', KEYS[1])
local size = tonumber(ARGV[3]) or 32
local ids
if members <= size then
  ids = redis.call('SMEMBERS', KEYS[1])
else
  ids = redis.call('SRANDMEMBER', KEYS[1], size)
end
local missing = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id .. ARGV[2]) == 0 then
    missing = missing + 1
  end
end
return {members, #ids, missing}
