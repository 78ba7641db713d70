-- begin: create an in-progress record unless a live one exists.
-- KEYS[1] record key
-- ARGV[1] now (8 bytes BE ms, or empty: the server's clock)
-- ARGV[2] fingerprint (32 bytes)   ARGV[3] fence (8 bytes)
-- ARGV[4] lease in ms (decimal, at least 1: also the record's PX)
-- Record layout: state ('P'|'C') .. fence(8) .. deadline(8) .. fingerprint(32) .. response
-- Fences are compared for equality only, as strings (no 64-bit integers in
-- Lua's doubles).
-- Returns {record or '', now as decimal, the record's PTTL}: the caller
-- decides between replay, in progress and mismatch with the same clock.
local now = now_ms(ARGV[1])
local v = redis.call('GET', KEYS[1])
if v then
  -- On the server's clock a record Redis still holds is live: its PX is its
  -- deadline (a record begun with plain commands carries the latest
  -- deadline there is in its deadline field; see plain.rs).
  local left = redis.call('PTTL', KEYS[1])
  if (ARGV[1] == '' and left >= 0) or ms(v, 10) > now then
    return {v, string.format('%.0f', now), left}
  end
end
-- None, or an expired lease or TTL: treated as no record (rules 8 and 9).
redis.call('SET', KEYS[1], 'P' .. ARGV[3] .. be8(deadline(now, ARGV[4])) .. ARGV[2], 'PX', ARGV[4])
return {'', string.format('%.0f', now), -2}
