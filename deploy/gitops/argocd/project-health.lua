-- Argo CD health of a codeb.dev Project, from what the operator writes to status.
-- Progressing until the operator observed this generation, then: Suspended when paused
-- (the codeb.dev/paused annotation, or Stalled for that reason) or stopped (spec.suspended,
-- once the operator has stopped it); Degraded when Stalled
-- (waiting will not help: a failed rollout, an invalid spec, a refusal, a component with
-- no driver); Healthy when Ready and not Reconciling (a new revision still rolling out is
-- Progressing, though the old one serves); Degraded when the Project was Ready and no
-- longer is; else Progressing, with the operator's own words.
local hs = {}
local status = obj.status
local generation = obj.metadata.generation or 0
if status == nil or status.observedGeneration == nil or status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local conditions = {}
for _, condition in ipairs(status.conditions or {}) do
  conditions[condition.type] = condition
end
local ready, stalled = conditions["Ready"], conditions["Stalled"]
local annotations = obj.metadata.annotations or {}
if annotations["codeb.dev/paused"] == "true" or (stalled ~= nil and stalled.status == "True"
    and (stalled.reason == "Paused" or stalled.reason == "ObserveOnly")) then
  hs.status = "Suspended"
  hs.message = (stalled ~= nil and stalled.message) or "Paused by the codeb.dev/paused annotation"
  return hs
end
if status.phase == "Suspended" and ready ~= nil and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = ready.message or "Suspended by spec.suspended"
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end
local reconciling = conditions["Reconciling"]
local busy = reconciling ~= nil and reconciling.status == "True"
if ready ~= nil and ready.status == "True" and not busy then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
if status.phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = (ready ~= nil and ready.message) or "no longer ready"
  return hs
end
hs.status = "Progressing"
hs.message = (busy and reconciling.message) or (ready ~= nil and ready.message) or "Waiting for the operator"
return hs
