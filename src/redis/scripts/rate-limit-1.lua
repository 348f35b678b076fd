--[[
  Fixed-window rate limit: counts one hit and makes sure the counter expires.
  INCR and EXPIRE in one script, so a counter can never be left without a TTL,
  even if the caller dies between the two (or another client INCRed it bare).

  Input:
    KEYS[1] counter key   agent:<id>:ratelimit:<window>
    ARGV[1] window length, seconds

  Output:
    {count after this hit, milliseconds until the window resets}
]]
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1]) * 1000
end
return {count, ttl}
