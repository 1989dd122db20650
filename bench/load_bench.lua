-- wrk script for bench/load_bench.py: each request is the next line of the
-- requests file (path, bearer token, tenant, client address, tab separated),
-- so one connection's requests rotate over many users, tenants and URLs.
-- Counts answers by status; load_bench.py reads the summary line it prints.
--   wrk ... -s bench/load_bench.lua URL -- REQUESTS_FILE

local lines = {}
local threads = {}
local counter = 0
statuses = {}  -- global: done() reads each thread's with thread:get

function setup(thread)
  table.insert(threads, thread)
  thread:set("offset", #threads * 7919)
end

function init(args)
  for line in io.lines(args[1]) do
    local path, token, tenant, address = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)$")
    if path then
      table.insert(lines, { path = path, token = token, tenant = tenant, address = address })
    end
  end
  counter = offset or 0
end

function request()
  counter = counter + 1
  local r = lines[(counter % #lines) + 1]
  return wrk.format("GET", r.path, {
    ["Authorization"] = "Bearer " .. r.token,
    ["X-Tenant-ID"] = r.tenant,
    ["X-Forwarded-For"] = r.address,
    ["Accept-Encoding"] = "gzip",
  })
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, n in pairs(counts) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, status .. "=" .. n)
  end
  io.write("STATUSES " .. table.concat(parts, " ") .. "\n")
  io.write(string.format("LATENCY_US p50=%d p90=%d p99=%d max=%d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  io.write(string.format("SUMMARY requests=%d duration_us=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d errors_status=%d\n",
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.errors.status))
end
