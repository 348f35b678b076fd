--[[
  The sweeper lease of a den: one member at a time sweeps the den. Takes the
  lease when nobody holds it, renews it when the caller holds it, releases it
  when asked to. Compare-and-set, so a caller whose lease lapsed and was taken
  by another member can neither renew nor release the other's lease.

  Input:
    KEYS[1] lease key     den:<den>:sweeper
    ARGV[1] holder token  '<agent id> <random>' (one per watcher instance)
    ARGV[2] lease ms      (> 0: take or renew for this long; 0: release)

  Output:
    {1, ms}               the caller holds the lease for ms
    {0, pttl, holder}     another member holds it for pttl more ms
    {0, 0, ''}            released (or it was not the caller's)

  A lease without an expiry (an operator's SET, a restored dump) would never
  lapse and nobody would sweep the den again: it is taken like a free one.
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
if not current or redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ms)
  return {1, ms}
end
return {0, redis.call('PTTL', KEYS[1]), current}
