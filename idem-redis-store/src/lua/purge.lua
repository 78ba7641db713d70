-- purge: delete the record if it is past its deadline by the caller's clock
-- (Redis expires records itself; this catches clock skew between instances).
-- KEYS[1] record key   ARGV[1] now (8 bytes BE ms)
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 10, 17) <= ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
