-- GET <prefix><a random id in [lo, hi]> (or, when the prefix holds "{id}", the prefix with
-- the id put there instead; or, without LO and HI, the prefix alone), with "Authorization: Bearer <key>" when a key is given; at the
-- end, one line "WRK_JSON {...}" with the figures bench/load.py reads.
--   wrk -t2 -c32 -d10s -s bench/wrk/reads.lua http://127.0.0.1:PORT -- /users/ LO HI [KEY]
--   ... -- '/transfers?limit=100&account_id={id}' LO HI KEY
--   ... -- /healthz '' '' [KEY]
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

function init(args)
  prefix = args[1]
  lo = tonumber(args[2])
  hi = tonumber(args[3])
  headers = {}
  if args[4] ~= nil and args[4] ~= "" then
    headers["Authorization"] = "Bearer " .. args[4]
  end
  math.randomseed(os.time() * 100 + seed)
end

function request()
  if lo == nil then
    return wrk.format("GET", prefix, headers)
  end
  local id = tostring(math.random(lo, hi))
  local path
  if string.find(prefix, "{id}", 1, true) then
    path = (string.gsub(prefix, "{id}", id))
  else
    path = prefix .. id
  end
  return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d,'
      .. ' "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
