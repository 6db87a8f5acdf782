-- wrk script: GET /jobs/{id} for random ids read from JOBD_IDS_FILE (one per line).
function init(args)
  api_key = os.getenv("JOBD_API_KEY")
  ids = {}
  for line in io.lines(os.getenv("JOBD_IDS_FILE")) do
    table.insert(ids, line)
  end
end

function request()
  local id = ids[math.random(1, #ids)]
  return wrk.format("GET", "/jobs/" .. id, {["Authorization"] = "Bearer " .. api_key})
end
