-- First executions: every request carries a key never seen before.
-- Keys are unique per run (a random prefix), per thread and per request.
local counter = 0
local prefix = ""

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1e9)))
end

function init(args)
  math.randomseed(os.time() + tonumber(tid))
  prefix = string.format("bench-%d-%s-", os.time(), tid)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- WRK_BODY replaces the payment (bench/transactional.sh sends transfers).
wrk.body = os.getenv("WRK_BODY") or '{"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}'

function request()
  counter = counter + 1
  -- wrk.format replaces wrk.headers with the table it is given: both go in.
  return wrk.format(nil, nil, { ["Content-Type"] = "application/json", ["Idempotency-Key"] = prefix .. counter })
end
