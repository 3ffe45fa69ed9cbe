-- Argo CD health check for gamezone.dev/GameZone (install: argocd-cm-patch.yaml).
-- Argo CD sets the global `obj` (the live object) and expects {status = ..., message = ...}.
-- Written for Argo CD's Lua 5.1 (gopher-lua); numbers arrive as floats.
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

local function condition(status, type_)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the GameZone operator to observe the zone"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the GameZone operator to observe generation " .. int(generation) ..
    " (status is for " .. int(status.observedGeneration) .. ")"
  return hs
end

local ready = condition(status, "Ready")
local phase = status.phase or "Pending"
local servers = status.readyText or (int(status.readyServers or 0) .. "/" .. int(status.desiredServers or 0))

if phase == "Degraded" then
  hs.status = "Degraded"
  if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  else
    hs.message = "The zone is Degraded; see its conditions"
  end
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = servers .. " servers Ready"
  if status.artifactRevision ~= nil then
    hs.message = hs.message .. ", artifacts " .. status.artifactRevision
  end
  return hs
end

-- Pending, Resolving, Packing, Migrating, Deploying, Terminating, or Running before Ready turns True.
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = phase .. ": " .. ready.message
else
  hs.message = phase .. ": " .. servers .. " servers Ready"
end
return hs
