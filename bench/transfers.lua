-- Transfers with a new key each (bench/transactional.sh): every request
-- runs the debit and credit phases and the final commit.
local counter = 0
local prefix = ""

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1e9)))
end

function init(args)
  math.randomseed(os.time() + tonumber(tid))
  prefix = string.format("transfer-%d-%s-", os.time(), tid)
end

wrk.method = "POST"
wrk.body = '{"from": "acct_a", "to": "acct_b", "amount": 500, "currency": "EUR"}'

function request()
  counter = counter + 1
  return wrk.format(nil, nil, { ["Content-Type"] = "application/json", ["Idempotency-Key"] = prefix .. counter })
end
