-- Prepended to every script (see lib.rs).
--
-- Times are numbers of ms since the epoch. They are compared as numbers,
-- never as strings: Lua's '<' on strings is strcoll, and Redis takes
-- LC_COLLATE from its environment, so under a locale such as en_US.UTF-8
-- byte strings do not sort bytewise. Every deadline is below 2^53 ms
-- (idem_core::clock::MAX_DEADLINE_MS), so a double holds it exactly.

-- The 8-byte big-endian time at s[i..i+7], as a number.
local function ms(s, i)
  local n = 0
  for j = i, i + 7 do
    n = n * 256 + string.byte(s, j)
  end
  return n
end

-- A time as 8 bytes, big-endian.
local function be8(n)
  local b = {}
  for i = 8, 1, -1 do
    b[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(b)
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
