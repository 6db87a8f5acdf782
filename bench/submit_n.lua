-- wrk script: JOBD_COUNT noop jobs (unique Idempotency-Keys), split over the threads;
-- a thread stops once its share has been answered with 201. Requests still in flight
-- then may add up to one per connection more (the caller counts what was created).
-- Env: JOBD_API_KEY, JOBD_TENANT, JOBD_COUNT, optional JOBD_WEBHOOK_URL; optional
-- JOBD_PORTS (p1,p2,...: several nodes on 127.0.0.1): thread i sends to node i mod n.
local threads = {}

function setup(thread)
  local ports = os.getenv("JOBD_PORTS")
  if ports and ports ~= "" then
    local list = {}
    for port in string.gmatch(ports, "%d+") do table.insert(list, port) end
    thread.addr = wrk.lookup("127.0.0.1", list[(#threads % #list) + 1])[1]
  end
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local count = tonumber(os.getenv("JOBD_COUNT"))
  local nthreads = tonumber(os.getenv("JOBD_THREADS") or "2")
  quota = math.floor(count / nthreads)
  if tid < count % nthreads then quota = quota + 1 end
  sent, created = 0, 0
  api_key = os.getenv("JOBD_API_KEY")
  local hook = os.getenv("JOBD_WEBHOOK_URL")
  local extra = ""
  if hook and hook ~= "" then extra = ',"webhookUrl":"' .. hook .. '"' end
  body = '{"tenantId":"' .. (os.getenv("JOBD_TENANT") or "bench") ..
         '","type":"noop","payload":{"n":1}' .. extra .. '}'
  -- LuaJIT's math.random starts from the same seed every time: the time keeps two
  -- runs against one daemon from replaying each other's keys
  prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9)) .. "-" .. tostring(tid) .. "-"
end

function request()
  if created >= quota then
    -- this thread's share is out: keep the connection busy with something harmless
    return wrk.format("GET", "/healthz")
  end
  sent = sent + 1
  return wrk.format("POST", "/jobs", {
    ["Authorization"] = "Bearer " .. api_key,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. sent,
  }, body)
end

function response(status, headers, body)
  if status == 201 then
    created = created + 1
    if created >= quota then wrk.thread:stop() end
  elseif status ~= 200 then
    io.stderr:write("unexpected status " .. status .. ": " .. (body or "") .. "\n")
  end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.stderr:write(string.format("thread %d: sent %d created %d quota %d\n",
      t:get("tid"), t:get("sent"), t:get("created"), t:get("quota")))
  end
end
