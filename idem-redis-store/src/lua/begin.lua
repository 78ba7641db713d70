-- begin: create an in-progress record unless a live one exists.
-- KEYS[1] record key
-- ARGV[1] now (8 bytes, big-endian ms)     ARGV[2] fingerprint (32 bytes)
-- ARGV[3] fence (8 bytes)                  ARGV[4] lease deadline (8 bytes BE ms)
-- ARGV[5] lease in ms (physical expiry)
-- Record layout: state ('P'|'C') .. fence(8) .. deadline(8) .. fingerprint(32) .. response
-- Fences are compared for equality only, as strings (no 64-bit integers in
-- Lua's doubles).
--
-- Times are compared as numbers, never as strings: Lua's '<' on strings is
-- strcoll, and Redis takes LC_COLLATE from its environment, so under a
-- locale such as en_US.UTF-8 byte strings do not sort bytewise. Every
-- millisecond time below 2^53 (the year 287396) is exact in a double.
local function ms(s, i)
  local n = 0
  for j = i, i + 7 do
    n = n * 256 + string.byte(s, j)
  end
  return n
end

local v = redis.call('GET', KEYS[1])
if v and ms(v, 10) > ms(ARGV[1], 1) then
  -- Live: the caller decides between replay, in progress and mismatch.
  return v
end
-- None, or an expired lease or TTL: treated as no record (rules 8 and 9).
redis.call('SET', KEYS[1], 'P' .. ARGV[3] .. ARGV[4] .. ARGV[2], 'PX', ARGV[5])
return false
