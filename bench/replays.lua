-- Replays: 16 keys, repeated. After the first 16 requests every answer is a
-- replay (the warm-up run executes them once).
local counter = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}'

function request()
  counter = counter + 1
  -- wrk.format replaces wrk.headers with the table it is given: both go in.
  return wrk.format(nil, nil, { ["Content-Type"] = "application/json", ["Idempotency-Key"] = "bench-replay-key-" .. (counter % 16) })
end
