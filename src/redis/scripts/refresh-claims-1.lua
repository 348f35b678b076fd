--[[
  Keeps a consumer's claim on the entries it is still working on: resets
  their idle time (XCLAIM ... JUSTID, which does not count a delivery) — but
  only for entries the group still lists as that consumer's, so an entry a
  live member took over (or that was acknowledged) is never taken back.

  Input:
    KEYS[1] stream
    ARGV[1] group
    ARGV[2] consumer
    ARGV[3..] entry ids

  Output:
    the ids that are no longer this consumer's (taken over, acknowledged or trimmed)
]]
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if row[1] and row[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
