-- get: the record and the clock to judge it by.
-- KEYS[1] record key   ARGV[1] now (8 bytes BE ms, or empty: the server's clock)
-- Returns {record or '', now as decimal, the key's PTTL}: on the server's
-- clock the PTTL, not the record's deadline field, says when it ends.
local v = redis.call('GET', KEYS[1])
return {v or '', string.format('%.0f', now_ms(ARGV[1])), redis.call('PTTL', KEYS[1])}
