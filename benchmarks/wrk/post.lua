-- POST one fixed body, read from a file, on every request; print a summary as JSON.
--
--   wrk -t1 -c32 -d5s --latency -s benchmarks/wrk/post.lua URL -- BODY_FILE CONTENT_TYPE [HEADER_LENGTH]
--
-- HEADER_LENGTH, when given, is sent as Inference-Header-Content-Length (the
-- length of the JSON header of a binary-tensor request, Triton's extension).
-- done() prints one line "WRK_JSON {...}" with the request count, errors,
-- latency percentiles (microseconds) and a count per HTTP status, summed over
-- all wrk threads. Counting statuses needs the response() hook, which costs
-- wrk a Lua call per response: small next to a Python server's time per
-- request, and the same for every target.

local threads = {}
statuses = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path, content_type, header_length = args[1], args[2], args[3]
   if path == nil or content_type == nil then
      error("usage: -- BODY_FILE CONTENT_TYPE [HEADER_LENGTH]")
   end
   local file = assert(io.open(path, "rb"))
   wrk.body = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = content_type
   if header_length ~= nil and header_length ~= "" then
      wrk.headers["Inference-Header-Content-Length"] = header_length
   end
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
end

local function json_object(tbl)
   local parts = {}
   for key, value in pairs(tbl) do
      table.insert(parts, string.format('"%s":%s', key, tostring(value)))
   end
   return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      local counts = thread:get("statuses") or {}
      for key, value in pairs(counts) do
         total[key] = (total[key] or 0) + value
      end
   end
   local errors = summary.errors
   local out = {
      requests = summary.requests,
      duration_us = summary.duration,
      bytes = summary.bytes,
      errors = json_object({
         connect = errors.connect,
         read = errors.read,
         write = errors.write,
         status = errors.status,
         timeout = errors.timeout,
      }),
      latency_us = json_object({
         min = latency.min,
         mean = string.format("%.1f", latency.mean),
         stdev = string.format("%.1f", latency.stdev),
         max = latency.max,
         p50 = latency:percentile(50),
         p90 = latency:percentile(90),
         p99 = latency:percentile(99),
      }),
      statuses = json_object(total),
   }
   local parts = {}
   for key, value in pairs(out) do
      table.insert(parts, string.format('"%s":%s', key, tostring(value)))
   end
   io.write("WRK_JSON {" .. table.concat(parts, ",") .. "}\n")
end
