-- wrk script for pintle benchmarks: a realistic ~600-byte track event from
-- 64 users, as single events (/v1/track) or batches (/v1/batch).
--   wrk ... -s load.lua URL -- <limit requests per thread, 0 = none> <events per request>
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic YmVuY2gta2V5Og==" -- "bench-key:"

local bodies = {}
local limit = 0
local count = 0
local non2xx = 0

local function event(u, seq)
  return string.format('{"type":"track","userId":"bench-user-%d","anonymousId":"anon-%08d","event":"Product Viewed",' ..
    '"properties":{"product_id":"507f1f77bcf86cd799439011","sku":"G-32","category":"Games","name":"Monopoly: 3rd Edition",' ..
    '"brand":"Hasbro","variant":"200 pieces","price":18.99,"quantity":1,"coupon":"MAYDEALS","currency":"usd","position":%d,' ..
    '"url":"https://www.example.com/product/path","image_url":"https://www.example.com/product/path.jpg"},' ..
    '"context":{"library":{"name":"analytics-node","version":"1.0.0"},"locale":"en-US","userAgent":"Mozilla/5.0 (X11; Linux x86_64)"},' ..
    '"originalTimestamp":"2024-05-01T10:00:00.000Z","sentAt":"2024-05-01T10:00:00.100Z"}', u, u, seq)
end

function init(args)
  limit = tonumber(args[1] or "0")
  local per = tonumber(args[2] or "1")
  for u = 1, 64 do
    if per == 1 then
      bodies[u] = event(u, 1)
    else
      local evs = {}
      for k = 1, per do evs[k] = event(u, k) end
      bodies[u] = '{"batch":[' .. table.concat(evs, ",") .. ']}'
    end
  end
end

function request()
  return wrk.format(nil, nil, nil, bodies[math.random(64)])
end

function response(status, headers, body)
  count = count + 1
  if status ~= 200 then non2xx = non2xx + 1 end
  if limit > 0 and count >= limit then wrk.thread:stop() end
end

function done(summary, latency, requests)
  io.write(string.format("BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"max_us\":%d,\"non2xx\":%d,\"socket_errors\":%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
