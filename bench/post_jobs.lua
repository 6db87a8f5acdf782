-- wrk script: POST /jobs with a unique Idempotency-Key per request.
-- Usage: wrk -s bench/post_jobs.lua ... with env JOBD_API_KEY and JOBD_TENANT set.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  api_key = os.getenv("JOBD_API_KEY")
  tenant = os.getenv("JOBD_TENANT") or "bench"
  local run_at = os.getenv("JOBD_RUN_AT")
  local extra = ""
  if run_at and run_at ~= "" then extra = ',"runAt":"' .. run_at .. '"' end
  body = '{"tenantId":"' .. tenant .. '","type":"noop","payload":{"to":"user@example.com","subject":"Hello","body":"Welcome! This is a benchmark payload of a few hundred bytes, roughly what a real job carries.","n":12345}' .. extra .. '}'
  -- LuaJIT's math.random starts from the same seed every time: the time keeps two
  -- runs against one daemon from replaying each other's keys
  prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9)) .. "-" .. tostring(tid) .. "-"
end

function request()
  counter = counter + 1
  local headers = {
    ["Authorization"] = "Bearer " .. api_key,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. counter,
  }
  return wrk.format("POST", "/jobs", headers, body)
end

function response(status, headers, body)
  if status ~= 201 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
end
