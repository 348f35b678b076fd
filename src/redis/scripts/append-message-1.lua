--[[
  Appends a message to a conversation window, keeps only the newest entries
  and refreshes the TTL, atomically: concurrent appenders can never leave the
  list longer than the limit or without a TTL.

  Input:
    KEYS[1] list key   agent:<id>:session:<sid>:messages
    ARGV[1] message (JSON text)
    ARGV[2] messages to keep
    ARGV[3] TTL, seconds

  Output:
    the list length after trimming
]]
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('LLEN', KEYS[1])
