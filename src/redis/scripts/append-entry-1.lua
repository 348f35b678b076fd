--[[
  Appends one durable entry and rings its doorbell, in one round trip.

  Input:
    KEYS[1] stream              inbox:<id> | den:<den>:tasks | a dead-letter stream
    ARGV[1] approximate cap     XADD MAXLEN ~ ARGV[1]
    ARGV[2..] field, value pairs (the first pair is envelope, <json>)

  Output:
    the new entry id; the same id is PUBLISHed on the channel named KEYS[1]
]]
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
redis.call('PUBLISH', KEYS[1], id)
return id
