-- begin: create an in-progress record unless a live one exists.
-- KEYS[1] record key
-- ARGV[1] now (8 bytes, big-endian ms)     ARGV[2] fingerprint (32 bytes)
-- ARGV[3] fence (8 bytes)                  ARGV[4] lease deadline (8 bytes BE ms)
-- ARGV[5] lease in ms (physical expiry)
-- Record layout: state ('P'|'C') .. fence(8) .. deadline(8) .. fingerprint(32) .. response
-- Big-endian fixed-width times compare as strings in numeric order, and
-- fences are compared as strings: no 64-bit integers in Lua's doubles.
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 10, 17) > ARGV[1] then
  -- Live: the caller decides between replay, in progress and mismatch.
  return v
end
-- None, or an expired lease or TTL: treated as no record (rules 8 and 9).
redis.call('SET', KEYS[1], 'P' .. ARGV[3] .. ARGV[4] .. ARGV[2], 'PX', ARGV[5])
return false
