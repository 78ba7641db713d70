-- Prepended to every script (see lib.rs).
--
-- Times are numbers of ms since the epoch. They are compared as numbers,
-- never as strings: Lua's '<' on strings is strcoll, and Redis takes
-- LC_COLLATE from its environment, so under a locale such as en_US.UTF-8
-- byte strings do not sort bytewise. Every deadline is below 2^53 ms
-- (idem_core::clock::MAX_DEADLINE_MS), so a double holds it exactly.

-- The 8-byte big-endian time at s[i..i+7], as a number. Redis's `struct`
-- library, not a loop of string.byte: packing and unpacking in Lua code
-- (a table, eight one-byte strings and a concat per time) was most of what
-- a `complete` cost Redis.
local function ms(s, i)
  return (struct.unpack('>I8', s, i))
end

-- A time as 8 bytes, big-endian.
local function be8(n)
  return struct.pack('>I8', n)
end

-- Now: the caller's clock when it sent one (8 bytes; tests move a manual
-- clock), else the server's own (TIME). Instances sharing a store then
-- share one clock, and one whose clock runs ahead cannot take over a live
-- lease (SPEC: lifetimes, shared stores).
local function now_ms(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return ms(arg, 1)
end

-- now + d ms, never past the latest deadline a record keeps.
local function deadline(now, d)
  return math.min(now + tonumber(d), 9007199254740991)
end
