-- wrk script: cycle through pre-signed Slack requests, one file line each: timestamp TAB signature TAB body.
-- Each wrk thread takes every n-th line (by thread id), so threads never send the same request.
-- A 200 whose body lacks the expected marker (argument 2) counts as an error, printed at the end.
-- With "once" (argument 4) a thread stops when it has sent each of its requests once: the bot accepts
-- a signature once, so a request sent again would be refused (a 401) and count as an error.

local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

local requests = {}
local index = 0
failures = 0
first_failure = ""

function init(args)
  local path, stride = args[1], tonumber(args[3] or "1")
  marker = args[2]
  once = args[4] == "once"
  local n = 0
  for line in io.lines(path) do
    if n % stride == (id - 1) % stride then
      local ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", "/slack/events", {
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["X-Slack-Request-Timestamp"] = ts,
        ["X-Slack-Signature"] = sig,
      }, body)
    end
    n = n + 1
  end
end

function request()
  index = index + 1
  if once and index >= #requests then
    wrk.thread:stop()  -- the responses still in flight are not waited for
  end
  if index > #requests then index = 1 end
  return requests[index]
end

function response(status, headers, body)
  if status ~= 200 or (marker ~= nil and marker ~= "" and not string.find(body, marker, 1, true)) then
    failures = failures + 1
    if first_failure == "" then
      first_failure = string.format("status=%d body=%s", status, string.sub(body or "", 1, 300))
    end
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("failures")
    local sample = thread:get("first_failure")
    if sample ~= nil and sample ~= "" then
      io.write("DPOR_BENCH_FAILURE " .. string.gsub(sample, "\n", " ") .. "\n")
    end
  end
  io.write(string.format("DPOR_BENCH failures=%d requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d\n",
    total, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max))
end
