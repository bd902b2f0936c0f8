-- wrk script: replays a signed plan, one request per line of the plan file
-- ("<idempotency key>\t<X-Signature>\t<body>"), wrapping around at its end,
-- and reports what it sent and what it got as one JSON line.
local plan_path = os.getenv("PLAN_FILE")
local tenant = os.getenv("PLAN_TENANT")
local path = os.getenv("PLAN_PATH")

local plan = {}
for line in io.lines(plan_path) do
  local key, sig, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
  plan[#plan + 1] = wrk.format("POST", path, {
    ["Host"] = "127.0.0.1",
    ["Content-Type"] = "application/json",
    ["X-Tenant-Id"] = tenant,
    ["Idempotency-Key"] = key,
    ["X-Signature"] = sig,
  }, body)
end

local threads = {}
function setup(thread) threads[#threads + 1] = thread end

sent, accepted, duplicates, conflicts, other = 0, 0, 0, 0, 0

function request()
  sent = sent + 1
  return plan[((sent - 1) % #plan) + 1]
end

function response(status, headers, body)
  if status == 201 then accepted = accepted + 1
  elseif status == 200 then duplicates = duplicates + 1
  elseif status == 422 then conflicts = conflicts + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local t = threads[1]
  io.write(string.format(
    'WRK_RESULT {"sent": %d, "accepted": %d, "duplicates": %d, "conflicts": %d, "other": %d, ' ..
    '"completed": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\n',
    t:get("sent"), t:get("accepted"), t:get("duplicates"), t:get("conflicts"), t:get("other"),
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
