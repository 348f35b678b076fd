--[[
  Retention of an absent agent's inbox: moves every entry it never
  acknowledged (pending, or not yet read) to its dead-letter stream and
  deletes the inbox. Atomic, so however many daemons run the check, each
  entry is dead-lettered once; refuses when the agent is back.

  Input:
    KEYS[1] inbox               inbox:<id>
    KEYS[2] dead-letter stream  inbox:<id>:dead
    KEYS[3] heartbeat           agent:<id>:heartbeat
    ARGV[1] group
    ARGV[2] approximate cap of the dead-letter stream
    ARGV[3] error text for the dead-letter entries

  Output:
    -1 the agent is alive (nothing done), else the number of entries moved
]]
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local moved = 0
local function move(id, fields, attempts)
  local envelope = ''
  for i = 1, #fields, 2 do
    if fields[i] == 'envelope' then envelope = fields[i + 1] end
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'envelope', envelope, 'error', ARGV[3],
    'attempts', tostring(attempts), 'source_id', id)
  moved = moved + 1
end
local last = '0-0'
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local name, lastId
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then lastId = g[i + 1] end
    end
    if name == ARGV[1] and lastId then
      last = lastId
      local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100000)
      for _, row in ipairs(pending) do
        local e = redis.call('XRANGE', KEYS[1], row[1], row[1])
        if e[1] then move(row[1], e[1][2], row[4]) end
      end
    end
  end
end
local unread = redis.call('XRANGE', KEYS[1], '(' .. last, '+')
for _, e in ipairs(unread) do move(e[1], e[2], 0) end
redis.call('DEL', KEYS[1])
return moved
