-- Argo CD health check for gamezone.dev/GameServer (one service instance of a zone).
-- GameServers are made by the operator, so Argo CD shows them under their GameZone.
local hs = {}
local status = obj.status
if status == nil or status.state == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the GameZone operator to start the instance"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the GameZone operator to observe generation %d", generation)
  return hs
end
local where = ""
if status.address ~= nil then
  where = " at " .. status.address
  if status.ports ~= nil and status.ports[1] ~= nil and status.ports[1].port ~= nil then
    where = where .. string.format(":%d", status.ports[1].port)
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
