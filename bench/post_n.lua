-- wrk script: POST exactly JOBD_COUNT jobs in all (split over the threads), then stop.
-- Optional JOBD_WEBHOOK_URL adds a webhookUrl to every job.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  api_key = os.getenv("JOBD_API_KEY")
  tenant = os.getenv("JOBD_TENANT") or "bench"
  quota = math.floor(tonumber(os.getenv("JOBD_COUNT")) / tonumber(os.getenv("JOBD_THREADS") or "2"))
  local hook = os.getenv("JOBD_WEBHOOK_URL")
  local extra = ""
  if hook and hook ~= "" then extra = ',"webhookUrl":"' .. hook .. '"' end
  body = '{"tenantId":"' .. tenant .. '","type":"noop","payload":{"n":1}' .. extra .. '}'
  prefix = tostring(math.random(1, 1e9)) .. "-" .. tostring(tid) .. "-"
  sent = 0
  done = 0
end

function request()
  sent = sent + 1
  if sent > quota then
    -- keep the connection busy with a replay (same key) until the thread stops
    sent = quota
  end
  local headers = {
    ["Authorization"] = "Bearer " .. api_key,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. sent,
  }
  return wrk.format("POST", "/jobs", headers, body)
end

function response(status, headers, body)
  done = done + 1
  if done >= quota then
    wrk.thread:stop()
  end
end
