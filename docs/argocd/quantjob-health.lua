-- Argo CD health of a QuantJob (quantjob.io/v1alpha1), from the status the operator writes.
--   Succeeded -> Healthy; Failed -> Degraded (the Failed condition's message says why);
--   anything else (no status yet, Pending, queued, Running, or a status older than the spec:
--   observedGeneration < generation) -> Progressing, so a sync (or a sync wave) that contains a
--   QuantJob waits until the quantized model is complete. A Pending status with a reason (e.g.
--   Unschedulable) shows the reason and the message.
-- Install: docs/argocd/README.md (argocd-cm key resource.customizations.health.quantjob.io_QuantJob).
local hs = {status = "Progressing", message = "waiting for the quantjob operator"}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, item in ipairs(status.conditions) do
    if item.type == kind then
      return item
    end
  end
  return nil
end

local function true_condition(status, kind)
  local found = condition(status, kind)
  if found ~= nil and found.status == "True" then
    return found
  end
  return nil
end

local function progress(status)
  local p = status.progress
  if p == nil or p.layersTotal == nil then
    return ""
  end
  return string.format(" (%s of %s layers)", tostring(p.layersDone or 0), tostring(p.layersTotal))
end

local function text(value)
  return value ~= nil and value ~= ""
end

if obj.status == nil then
  return hs
end
local status = obj.status
local phase = status.phase
local generation = obj.metadata and obj.metadata.generation

if status.observedGeneration ~= nil and generation ~= nil and status.observedGeneration < generation then
  hs.message = "waiting for the operator to see generation " .. tostring(generation)
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "quantized model complete" .. progress(status)
elseif phase == "Failed" then
  hs.status = "Degraded"
  local failed = true_condition(status, "Failed")
  if failed ~= nil and text(failed.message) then
    hs.message = failed.message
  elseif text(status.message) then
    hs.message = status.message
  else
    hs.message = "QuantJob failed"
  end
elseif phase == "Running" then
  hs.message = "quantizing" .. progress(status)
elseif true_condition(status, "Suspended") ~= nil then
  hs.message = "queued: the Job is suspended until its queue admits it"
elseif phase == "Pending" and text(status.reason) then
  hs.message = "pending (" .. status.reason .. ")" .. (text(status.message) and (": " .. status.message) or "")
elseif phase == "Pending" then
  local world = status.worldSize and (" on " .. tostring(status.worldSize) .. " device(s)") or ""
  hs.message = "waiting for the worker pods" .. world
end
return hs
