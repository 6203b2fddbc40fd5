-- The bench's HTTP load when it comes from wrk (bench/load.ts runs it; see LoadKind there):
--   wrk -t1 -c50 -d5s -s bench/wrk.lua http://127.0.0.1:3000 -- SEED USERS KIND [ITEM...]
-- USERS is - (each activation for a new user, no credentials) or, for AUTH_MODE=jwt, a file of
-- "<user id> <JWT>" lines (LoadSpec.usersFile): activations act as its users in turn, and every
-- request carries its user's JWT as a bearer token.
-- KIND is cycle, activate, get PATH, get-any PATH..., or validate TOKEN:USER:FENCE...
-- It prints one line, "wrk-result {json}", with every answer's status counted, the cycles
-- completed, and wrk's own figures. A cycle run stops with leases activated and not yet released
-- (up to one per connection), or whose release was not answered; with WRK_LEFTOVERS set, it
-- writes them to that file, a line "<token> <user> <lease>" each, for bench/load.ts to release.

local random = math.random

local kind
local users = {}    -- AUTH_MODE=jwt: {id, json, auth}: the headers its requests carry
local byId = {}     -- the same users by id, to release a lease with its holder's JWT
local turn = 0      -- the user the last activation acted as
local fixed = {}    -- the requests of get, get-any and validate, formatted once per user
local threads = {}

-- Globals, so that done() can read each thread's with thread:get.
statuses = {}
cycles = 0
-- cycle: activations answered, "<token> <user> <lease>", waiting for their release; and those
-- whose release is sent and not yet answered, by lease id. Strings: thread:get crashes wrk on a
-- table of tables.
released = {}
sending = {}

local json = { ["Content-Type"] = "application/json" }

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("id", #threads) -- each thread's own random users
end

function init(args)
  math.randomseed(tonumber(args[1]) * 64 + id)
  if args[2] ~= "-" then
    for line in io.lines(args[2]) do
      local user, jwt = line:match("^(%S+) (%S+)$")
      local auth = "Bearer " .. jwt
      users[#users + 1] = { id = user, json = { ["Content-Type"] = "application/json", ["Authorization"] = auth },
        auth = { ["Authorization"] = auth } }
      byId[user] = users[#users]
    end
    turn = random(#users)
  end
  kind = args[3]
  -- Without users, one set of requests without credentials.
  for u = 1, math.max(1, #users) do
    local user = users[u] or { json = json, auth = {} }
    local requests = {}
    for i = 4, #args do
      local item = args[i]
      if kind == "validate" then
        local token, holder, fence = item:match("^([^:]+):([^:]+):([^:]+)$")
        requests[#requests + 1] = wrk.format("POST", "/api/tokens/" .. token .. "/validate", user.json,
          '{"user_id":"' .. holder .. '","fence":' .. fence .. "}")
      else
        requests[#requests + 1] = wrk.format("GET", item, user.auth)
      end
    end
    fixed[u] = requests
  end
end

-- A random (version 4) UUID: a new user for each activation.
local function uuid()
  return string.format("%08x-%04x-4%03x-%04x-%04x%08x", random(0, 0xffffffff), random(0, 0xffff),
    random(0, 0xfff), random(0x8000, 0xbfff), random(0, 0xffff), random(0, 0xffffffff))
end

local function activation()
  if #users == 0 then
    return wrk.format("POST", "/api/tokens/activate", json, '{"user_id":"' .. uuid() .. '"}')
  end
  turn = turn % #users + 1
  local user = users[turn]
  return wrk.format("POST", "/api/tokens/activate", user.json, '{"user_id":"' .. user.id .. '"}')
end

request = function()
  if kind == "cycle" then
    -- A cycle is an activation and the release of the token it got. wrk does not say which
    -- connection an answer came on, so the next request on any connection releases it.
    local n = #released
    if n == 0 then return activation() end
    local entry = released[n]
    local token, user, lease = entry:match("^(%S+) (%S+) (%S+)$")
    released[n] = nil
    sending[lease] = entry
    local holder = byId[user]
    -- The body as test/harness/leaseBodies.ts builds it: the user and the lease.
    return wrk.format("POST", "/api/tokens/" .. token .. "/release", holder and holder.json or json,
      '{"user_id":"' .. user .. '","lease_id":"' .. lease .. '"}')
  elseif kind == "activate" then
    return activation()
  else
    local requests = fixed[random(#fixed)]
    return requests[random(#requests)]
  end
end

response = function(status, _, body)
  statuses[status] = (statuses[status] or 0) + 1
  if kind ~= "cycle" then return end
  -- An activation answers 201, or 200 with the lease its user already held (a user of USERS
  -- comes back in turn, and the warm-up may have left it one): either lease is released next.
  -- A release answers 200 without activated_at.
  if status == 201 or (status == 200 and body:find('"activated_at"', 1, true)) then
    local token = body:match('"token_id":"([^"]+)"')
    local user = body:match('"user_id":"([^"]+)"')
    local lease = body:match('"lease_id":"([^"]+)"')
    if token and user and lease then released[#released + 1] = token .. " " .. user .. " " .. lease end
  elseif status == 200 then
    cycles = cycles + 1
    local lease = body:match('"lease_id":"([^"]+)"')
    if lease then sending[lease] = nil end
  end
end

function done(summary, latency, _)
  local counts, total = {}, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
    total = total + thread:get("cycles")
  end
  local counted = {}
  for status, count in pairs(counts) do
    counted[#counted + 1] = string.format('"%d":%d', status, count)
  end
  local leftovers = os.getenv("WRK_LEFTOVERS")
  if leftovers ~= nil and leftovers ~= "" then
    local file = assert(io.open(leftovers, "w"))
    for _, thread in ipairs(threads) do
      for _, lease in ipairs(thread:get("released")) do file:write(lease, "\n") end
      for _, lease in pairs(thread:get("sending")) do file:write(lease, "\n") end
    end
    file:close()
  end
  local e = summary.errors
  io.write(string.format(
    'wrk-result {"seconds":%.6f,"requests":%d,"cycles":%d,"statuses":{%s},' ..
    '"socketErrors":%d,"p50":%.3f,"p99":%.3f,"max":%.3f}\n',
    summary.duration / 1e6, summary.requests, total, table.concat(counted, ","),
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
