-- purge: delete the record if it is past its deadline (Redis expires
-- records itself with PX; this catches the rest).
-- KEYS[1] record key   ARGV[1] now (8 bytes BE ms, or empty: the server's clock)
-- On the server's clock only a record without PX can outlive its deadline
-- (Redis drops the rest at their PX; see plain.rs).
local v = redis.call('GET', KEYS[1])
if v and ms(v, 10) <= now_ms(ARGV[1])
    and (ARGV[1] ~= '' or redis.call('PTTL', KEYS[1]) == -1) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
