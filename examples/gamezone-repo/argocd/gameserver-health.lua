-- Argo CD health check for gamezone.dev/GameServer (one service instance of a zone).
-- GameServers are made by the operator, so Argo CD shows them under their GameZone.
local hs = {}

-- Argo CD's sandbox opens only Lua's base, table and os libraries (no string, no math), so
-- whole numbers, which arrive as floats, are written out digit by digit.
local DIGITS = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}
local function int(n)
  n = n - n % 1
  if n < 0 then
    return "-" .. int(-n)
  end
  local out = ""
  repeat
    local d = n % 10
    out = DIGITS[d + 1] .. out
    n = (n - d) / 10
  until n == 0
  return out
end

local status = obj.status
if status == nil or status.state == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the GameZone operator to start the instance"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the GameZone operator to observe generation " .. int(generation)
  return hs
end
local where = ""
if status.address ~= nil then
  where = " at " .. status.address
  if status.ports ~= nil and status.ports[1] ~= nil and status.ports[1].port ~= nil then
    where = where .. ":" .. int(status.ports[1].port)
  end
end
if status.state == "Ready" then
  hs.status = "Healthy"
  hs.message = "Ready" .. where
elseif status.state == "Unhealthy" then
  hs.status = "Degraded"
  hs.message = status.message or "The instance's pod failed; it will be replaced"
else
  hs.status = "Progressing"
  if status.message ~= nil and status.message ~= "" then
    hs.message = status.state .. ": " .. status.message
  else
    hs.message = status.state
  end
end
return hs
