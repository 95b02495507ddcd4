-- wrk script of the benchmark harness (bench/wrk.py runs wrk with it).
--
-- done(): one line "WRKJSON {...}" with the counts and latency percentiles (in
-- microseconds, from wrk's own histogram), for the harness to parse.
--
-- delay(): only when WRK_RATE (requests/s, for this wrk thread; the harness runs one
-- thread) is set. Requests get slots on one schedule, every 1/WRK_RATE s; each
-- connection, when it is free, waits for the next unclaimed slot. A connection that
-- is late for its slot sends at once, so a server that stalls gets the missed
-- requests in a burst afterwards (the achieved rate stays the offered one, unless
-- every connection is busy). Closed-loop caveat: wrk times a request from when it
-- is sent, not from its slot, so time a request waited for a free connection is
-- not counted (wrk2 would count it; it is not packaged by Debian).
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local now_spec = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_spec)
  return tonumber(now_spec.tv_sec) * 1000 + tonumber(now_spec.tv_nsec) / 1e6
end

local rate = tonumber(os.getenv("WRK_RATE") or "") or 0
if rate > 0 then
  local interval_ms = 1000 / rate
  local next_slot = nil
  function delay()
    local now = now_ms()
    if next_slot == nil then next_slot = now end
    local wait = next_slot - now
    next_slot = next_slot + interval_ms
    if wait < 0 then return 0 end
    return wait
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d}, "mean_us": %.1f, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, "rate": %g}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, rate))
end
