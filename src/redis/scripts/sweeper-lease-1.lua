--[[
  The sweeper lease of a den: one member at a time sweeps the den. Takes the
  lease when nobody holds it, renews it when the caller holds it, releases it
  when asked to. Compare-and-set, so a caller whose lease lapsed and was taken
  by another member can neither renew nor release the other's lease.

  Input:
    KEYS[1] lease key     den:<den>:sweeper
    ARGV[1] holder token  '<agent id> <random>' (one per watcher instance)
    ARGV[2] lease ms      (> 0: take or renew for this long; 0: release)
    ARGV[3] heartbeat key prefix   ('agent:')
    ARGV[4] heartbeat key suffix   (':heartbeat')

  Output:
    {1, ms}               the caller holds the lease for ms
    {0, pttl, holder}     another member holds it for pttl more ms
    {0, 0, ''}            released (or it was not the caller's)

  A lease without an expiry (an operator's SET, a restored dump) would never
  lapse and nobody would sweep the den again: it is taken like a free one; so
  is one whose holder (the token up to its last space) has no heartbeat key,
  whatever its expiry: a dead holder, or a value no member wrote.
]]
local ms = tonumber(ARGV[2]) or 0
local current = redis.call('GET', KEYS[1])
if ms <= 0 then
  if current == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return {0, 0, ''}
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ms)
  return {1, ms}
end
local function orphaned()
  if redis.call('PTTL', KEYS[1]) == -1 then return true end
  local id = string.match(current, '^(.*) [^ ]*$') or current
  return redis.call('EXISTS', (ARGV[3] or 'agent:') .. id .. (ARGV[4] or ':heartbeat')) == 0
end
if not current or orphaned() then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ms)
  return {1, ms}
end
return {0, redis.call('PTTL', KEYS[1]), current}
