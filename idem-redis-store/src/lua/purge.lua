-- purge: delete the record if it is past its deadline by the caller's clock
-- (Redis expires records itself; this catches clock skew between instances).
-- KEYS[1] record key   ARGV[1] now (8 bytes BE ms)
-- Times are compared as numbers, never as strings (see begin.lua: Lua's
-- string '<' follows the server's LC_COLLATE).
local function ms(s, i)
  local n = 0
  for j = i, i + 7 do
    n = n * 256 + string.byte(s, j)
  end
  return n
end

local v = redis.call('GET', KEYS[1])
if v and ms(v, 10) <= ms(ARGV[1], 1) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
