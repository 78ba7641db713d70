-- release: remove the record held by the fence, so a retry executes again.
-- KEYS[1] record key   ARGV[1] fence (8 bytes)
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 1) ~= 'P' or string.sub(v, 2, 9) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
