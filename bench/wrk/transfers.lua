-- POST /transfers as fast as each connection gets its answers (a closed loop): from one
-- random account to another in [lo, hi], 1..100 cents, a fresh Idempotency-Key each
-- ("<tag>-<thread>-<n>"), with "Authorization: Bearer <key>". At the end, one line
-- "WRK_JSON {...}" with the figures bench/load.py reads, the answers counted by status.
--   wrk -t2 -c32 -d15s -s bench/wrk/transfers.lua http://127.0.0.1:PORT -- LO HI KEY TAG
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("seed", #threads)
end

function init(args)
  lo = tonumber(args[1])
  hi = tonumber(args[2])
  prefix = args[4] .. "-" .. seed .. "-"
  n = 0
  statuses = {}
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. args[3],
  }
  math.randomseed(os.time() * 100 + seed)
end

function request()
  n = n + 1
  local payer = math.random(lo, hi)
  local payee = math.random(lo, hi - 1)
  if payee >= payer then
    payee = payee + 1
  end
  headers["Idempotency-Key"] = prefix .. n
  local body = string.format(
    '{"from_account_id": %d, "to_account_id": %d, "amount": %d}',
    payer, payee, math.random(1, 100))
  return wrk.format("POST", "/transfers", headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d,'
      .. ' "p50_us": %d, "p99_us": %d, "max_us": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(parts, ", ")))
end
