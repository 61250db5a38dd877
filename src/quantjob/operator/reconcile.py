"""The reconciler: look at one QuantJob and everything it owns, decide (``lifecycle.decide``), act.

Level-triggered: it runs on every QuantJob event, every event of a child Job or progress ConfigMap,
at operator start and on a timer, and each time it works from what exists now: a missing child is
created again (under its deterministic name, so never twice), an object of a child's name that this
QuantJob does not own is a conflict reported in status and never adopted, and a create the API
server refuses ends the QuantJob Failed with the server's message (or Pending, while the refusal can
pass, e.g. an exhausted quota). Calls for one QuantJob never overlap (a lock per QuantJob).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes

from quantjob.operator import claims, kube
from quantjob.operator.builders import (
    LABEL_ATTEMPT,
    PROGRESS_KEY,
    ChildNames,
    build_attempt,
    build_setup,
    owner_reference,
)
from quantjob.operator.lifecycle import Limits, Observed, decide
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import Settings
from quantjob.operator.status import (
    TERMINAL_PHASES,
    changed,
    invalid_status,
    now_iso,
    set_condition,
)

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, settings: Settings, api: Callable[[], kubernetes.client.ApiClient],
                 clock: Callable[[], str] = now_iso) -> None:
        self.settings = settings
        self.api = api
        self.clock = clock
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def reconcile(self, namespace: str, name: str) -> None:
        """Bring QuantJob ``namespace/name`` one step closer to done (safe to call any time)."""
        with self._lock(namespace, name):
            body = kube.get_quantjob(self.api(), namespace, name)
            if body is None:
                with self._guard:
                    self._locks.pop((namespace, name), None)
                return
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            self._reconcile(body)

    def _reconcile(self, body: Mapping[str, Any]) -> None:
        api, settings, now = self.api(), self.settings, self.clock()
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
        previous = dict(body.get("status") or {})
        resolution = review_quantjob(body, settings)
        if not resolution.ok or resolution.job is None:
            if previous.get("attempt"):
                return  # it was admitted and has run; a changed operator policy does not undo that
            refused = invalid_status(resolution.problems, previous, now)
            self._write(body, previous, refused, self._phase_event(previous, refused))
            return
        job = resolution.job
        names = ChildNames(name)
        status: dict[str, Any] = {
            "runner": resolution.runner, "worldSize": resolution.world_size,
            "warnings": [str(p) for p in resolution.problems if p.severity == "warning"],
        }
        if meta.get("generation") is not None:
            status["observedGeneration"] = meta["generation"]
        owner = owner_reference(body)
        terminal = previous.get("phase") in TERMINAL_PHASES
        if not terminal:
            try:
                for child in build_setup(job, resolution, settings, namespace):
                    child["metadata"]["ownerReferences"] = [owner]
                    kube.ensure(api, child, uid)
            except (kube.ChildConflict, kube.CreateRejected) as error:
                if isinstance(error, kube.CreateRejected) and not error.permanent and previous.get("attempt"):
                    # a missing shared child that cannot be made now (a quota) must not hide what the
                    # running attempt does: say so and go on observing it
                    status["warnings"] = [*status["warnings"], f"{error}; retried at the next reconcile"]
                else:
                    blocked = {**status, **self._blocked(error, previous, now)}
                    self._write(body, previous, blocked, self._phase_event(previous, blocked))
                    return
        attempt = int(previous.get("attempt") or 1)
        job_obj = kube.get(api, kube.Ref("batch/v1", "jobs", namespace, names.job(attempt)))
        if job_obj is not None and not kube.owned_by(job_obj, uid):
            conflict = kube.ChildConflict(f"Job {names.job(attempt)} already exists and was not created by this "
                                          "QuantJob; delete it, or give the QuantJob another name")
            blocked = {**status, **self._blocked(conflict, previous, now)}
            self._write(body, previous, blocked, self._phase_event(previous, blocked))
            return
        observed = Observed(name=name, status=previous, now=now, job=job_obj, limits=Limits(
            world_size=resolution.world_size, max_restarts=job.spec.maxRestarts,
            max_disruptions=job.spec.maxDisruptions, startup_timeout_s=job.spec.startupTimeoutSeconds,
            active_deadline_s=job.spec.activeDeadlineSeconds))
        entry: dict[str, Any] = next((item for item in previous.get("attempts") or []
                                      if item.get("attempt") == attempt), {})
        if job_obj is not None or (entry.get("jobCreated") and not terminal):
            # a vanished Job's pods too: the next attempt waits until they are gone
            observed.pods = [pod for pod in kube.list_owned(api, "v1", "pods", namespace, name)
                             if ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT) == str(attempt)]
        if job_obj is not None:
            if not terminal and previous.get("phase") != "Running":
                observed.job_events = kube.list_events(api, namespace, "Job", names.job(attempt))
                pod_names = {(pod.get("metadata") or {}).get("name") for pod in observed.pods}
                observed.pod_events = [event for event in kube.list_events(api, namespace, "Pod")
                                       if (event.get("involvedObject") or {}).get("name") in pod_names] \
                    if pod_names else []
        elif not terminal:
            if job.spec.devices.type == "npu" and settings.npu_runtime_class:
                runtime_class = kube.Ref("node.k8s.io/v1", "runtimeclasses", None, settings.npu_runtime_class)
                if kube.get(api, runtime_class) is None:
                    observed.missing_runtime_class = settings.npu_runtime_class
            refusal, warnings = claims.check_claims(api, job, namespace, resolution.world_size)
            observed.volume_error = refusal
            status["warnings"] = [*status["warnings"], *warnings]
        if settings.progress_reporting:
            observed.progress = _progress(kube.get(api, kube.Ref("v1", "configmaps", namespace, names.progress)))
        decision = decide(observed)
        status.update(decision.status)
        events = list(decision.events)
        if decision.create_attempt is not None:
            try:
                for child in build_attempt(job, resolution, settings, namespace, decision.create_attempt):
                    child["metadata"]["ownerReferences"] = [owner]
                    kube.ensure(api, child, uid)
                for item in status.get("attempts") or []:
                    if item.get("attempt") == decision.create_attempt:
                        item["jobCreated"] = True  # from now on its Job's absence ends the attempt
            except (kube.ChildConflict, kube.CreateRejected) as error:
                blocked = self._blocked(error, previous, now)
                status.update(blocked)
                events.append(("Warning", blocked["reason"], blocked["message"]))
        if decision.delete_job:
            kube.delete(api, kube.Ref("batch/v1", "jobs", namespace, decision.delete_job))
        if terminal:
            status = {key: value for key, value in status.items() if key in decision.status}
        else:
            message = f"runner {resolution.runner} on {resolution.world_size} device(s)"
            status["conditions"] = set_condition(status.get("conditions") or previous.get("conditions") or [],
                                                 "Valid", True, "Checked", message, now)
        self._write(body, previous, status, events)

    def _blocked(self, error: Exception, previous: Mapping[str, Any], now: str) -> dict[str, Any]:
        """Status for a child that cannot be created: a conflict waits (Pending), so does a refusal that
        may pass later; a refusal of the object itself is final (Failed)."""
        if isinstance(error, kube.CreateRejected) and error.permanent:
            phase, reason = "Failed", "CreateRejected"
        elif isinstance(error, kube.CreateRejected):
            phase, reason = "Pending", "CreateRefused"
        else:
            phase, reason = "Pending", "ChildConflict"
        message = str(error)
        conditions = set_condition(previous.get("conditions") or [], "Failed", phase == "Failed",
                                   reason if phase == "Failed" else "NotFailed",
                                   message if phase == "Failed" else "", now)
        status: dict[str, Any] = {"phase": phase, "reason": reason, "message": message[:1024],
                                  "conditions": conditions}
        if phase == "Failed":
            status["completionTime"] = previous.get("completionTime") or now
        return status

    def _write(self, body: Mapping[str, Any], previous: Mapping[str, Any], status: Mapping[str, Any],
               events: list[tuple[str, str, str]]) -> None:
        meta = body["metadata"]
        if changed(status, previous):
            kube.patch_quantjob_status(self.api(), meta["namespace"], meta["name"], status)
            if status.get("phase") != previous.get("phase") or status.get("reason") != previous.get("reason"):
                log.info("QuantJob %s/%s: %s (%s) %s", meta["namespace"], meta["name"], status.get("phase"),
                         status.get("reason"), status.get("message") or "")
            for type_, reason, message in events:
                kube.create_event(self.api(), body, type_, reason, message, self.clock())

    @staticmethod
    def _phase_event(previous: Mapping[str, Any], status: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        if "phase" in status and (status.get("phase"), status.get("reason")) != \
                (previous.get("phase"), previous.get("reason")):
            kind = "Warning" if status.get("phase") == "Failed" or status.get("reason") == "ChildConflict" \
                else "Normal"
            return [(kind, str(status.get("reason") or status["phase"]), str(status.get("message") or ""))]
        return []


def _progress(config_map: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The worker's progress record; None when absent or not JSON (never trusted beyond its fields)."""
    text = ((config_map or {}).get("data") or {}).get(PROGRESS_KEY)
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
