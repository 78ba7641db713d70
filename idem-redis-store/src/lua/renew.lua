-- renew: extend the lease of the holder of the fence.
-- KEYS[1] record key
-- ARGV[1] fence (8 bytes)   ARGV[2] now (8 bytes BE ms, or empty: the server's clock)
-- ARGV[3] lease in ms
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 1) ~= 'P' or string.sub(v, 2, 9) ~= ARGV[1] then
  return 0
end
local now = now_ms(ARGV[2])
redis.call('SET', KEYS[1], 'P' .. ARGV[1] .. be8(deadline(now, ARGV[3])) .. string.sub(v, 18), 'PX', ARGV[3])
return 1
