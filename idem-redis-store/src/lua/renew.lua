-- renew: extend the lease of the holder of the fence.
-- KEYS[1] record key
-- ARGV[1] fence (8 bytes)  ARGV[2] new deadline (8 bytes BE ms)  ARGV[3] lease in ms
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 1) ~= 'P' or string.sub(v, 2, 9) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], 'P' .. ARGV[1] .. ARGV[2] .. string.sub(v, 18), 'PX', ARGV[3])
return 1
