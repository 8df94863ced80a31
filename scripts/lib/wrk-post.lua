-- wrk script of scripts/http-load: one POST, repeated, with a form body and an
-- Authorization header, both from the environment (not from wrk's command line, which
-- `ps` shows to every user):
--   WRK_BODY          the form body (application/x-www-form-urlencoded)
--   WRK_AUTH          the Authorization header value (e.g. "Basic ...")
--   WRK_MAX_REQUESTS  stop each thread after this many responses (0 or unset: no bound
--                     other than wrk's --duration); the bound is per thread
--   WRK_EXPECT        a plain substring every 2xx body must contain (unset: not checked);
--                     a 2xx answer without it counts as "unexpected"
--   WRK_THREADS       wrk's -t (to split WRK_MAX_REQUESTS between threads)
-- At the end it prints one JSON line, prefixed by "WRK_JSON ", with the figures.

local body = os.getenv("WRK_BODY") or ""
local auth = os.getenv("WRK_AUTH")
local expect = os.getenv("WRK_EXPECT")
if expect == "" then expect = nil end
local threads_n = tonumber(os.getenv("WRK_THREADS") or "1") or 1
local max_total = tonumber(os.getenv("WRK_MAX_REQUESTS") or "0") or 0

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

local threads = {}

-- A monotonic clock (LuaJIT's ffi): when a thread stops at its request bound before the
-- duration ends, the rate is computed over the time the threads actually ran.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } wrk_post_timespec;
int clock_gettime(int clk_id, wrk_post_timespec *tp);
]]
local ts = ffi.new("wrk_post_timespec")
local function now_s()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

function setup(thread)
  table.insert(threads, thread)
end

-- Per-thread state (each thread has its own Lua state); globals, so done() can read them
-- with thread:get().
seen = 0
unexpected = 0
non2xx = 0
local limit = 0
t_start = 0
t_stop = 0

function init(args)
  t_start = now_s()
  if max_total > 0 then
    limit = math.ceil(max_total / threads_n)
  end
end

function response(status, headers, resp_body)
  seen = seen + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  elseif expect and not string.find(resp_body, expect, 1, true) then
    unexpected = unexpected + 1
  end
  if limit > 0 and seen >= limit then
    if t_stop == 0 then t_stop = now_s() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local unexp, bad = 0, 0
  for _, t in ipairs(threads) do
    unexp = unexp + (t:get("unexpected") or 0)
    bad = bad + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  local all_stopped, ran = true, 0
  for _, t in ipairs(threads) do
    local t0, t1 = t:get("t_start") or 0, t:get("t_stop") or 0
    if t1 > 0 and t0 > 0 then
      if t1 - t0 > ran then ran = t1 - t0 end
    else
      all_stopped = false
    end
  end
  if all_stopped and ran > 0 and ran < secs then secs = ran end
  local rps = 0
  if secs > 0 then rps = summary.requests / secs end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"requests_per_s":%.1f,' ..
    '"latency_ms":{"mean":%.3f,"p50":%.3f,"p90":%.3f,"p99":%.3f,"max":%.3f},' ..
    '"non_2xx":%d,"unexpected_body":%d,' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.requests, secs, rps,
    latency.mean / 1000, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    bad, unexp, e.connect, e.read, e.write, e.timeout))
end
