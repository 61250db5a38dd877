"""The reconciler: look at one QuantJob and everything it owns, decide (``lifecycle.decide``), act:
three steps, ``_observe`` (reads only), ``_decide`` (pure) and ``_act`` (performs the plan's writes).

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
from dataclasses import dataclass, field
from typing import Any

import kubernetes

from quantjob.api.check import Resolution
from quantjob.api.resource import QuantJob
from quantjob.operator import claims, kube
from quantjob.operator.builders import (
    LABEL_ATTEMPT,
    PROGRESS_KEY,
    ChildNames,
    Manifest,
    build_attempt,
    build_setup,
    owner_reference,
)
from quantjob.operator.lifecycle import decide
from quantjob.operator.observation import Limits, Observed
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
Event = tuple[str, str, str]  # (type, reason, message)


@dataclass
class Seen:
    """What ``_observe`` read: the QuantJob, its review and, once admitted, its current attempt
    (``observed``), or the Job of that attempt's name that another object owns (``conflict``)."""

    body: Mapping[str, Any]
    previous: dict[str, Any]
    now: str
    resolution: Resolution
    conflict: kube.ChildConflict | None = None
    observed: Observed | None = None
    claim_warnings: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.previous.get("phase") in TERMINAL_PHASES


@dataclass
class Plan:
    """What ``_decide`` settled and ``_act`` performs: the status to write (None: write nothing) with
    its events, the shared children to ensure first, the new attempt's children, a Job to stop."""

    base: dict[str, Any]                        # the review's part of the status
    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    setup: list[Manifest] = field(default_factory=list)
    create_attempt: int | None = None
    attempt: list[Manifest] = field(default_factory=list)
    delete_job: str | None = None


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
        seen = self._observe(body)
        self._act(seen, self._decide(seen))

    def _observe(self, body: Mapping[str, Any]) -> Seen:
        """Read: the QuantJob's review, then (once admitted) its current attempt's Job, pods, events,
        what its pods need that may be missing, and the worker's progress. Writes nothing."""
        api, settings = self.api(), self.settings
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
        previous = dict(body.get("status") or {})
        seen = Seen(body, previous, self.clock(), review_quantjob(body, settings))
        job = seen.resolution.job
        if not seen.resolution.ok or job is None:
            return seen
        names, attempt = ChildNames(name), int(previous.get("attempt") or 1)
        job_obj = kube.get(api, kube.Ref("batch/v1", "jobs", namespace, names.job(attempt)))
        if job_obj is not None and not kube.owned_by(job_obj, uid):
            seen.conflict = kube.ChildConflict(f"Job {names.job(attempt)} already exists and was not created by "
                                               "this QuantJob; delete it, or give the QuantJob another name")
            return seen
        seen.observed = Observed(name=name, status=previous, now=seen.now, job=job_obj, limits=Limits(
            world_size=seen.resolution.world_size, max_restarts=job.spec.maxRestarts,
            max_disruptions=job.spec.maxDisruptions, startup_timeout_s=job.spec.startupTimeoutSeconds,
            active_deadline_s=job.spec.activeDeadlineSeconds))
        self._observe_attempt(seen, seen.observed, job)
        return seen

    def _observe_attempt(self, seen: Seen, observed: Observed, job: QuantJob) -> None:
        """The current attempt's pods; while it starts, the events about them; before its Job exists,
        what its pods would lack (the RuntimeClass, mountable claims); the worker's progress."""
        api, settings, previous = self.api(), self.settings, seen.previous
        namespace, name = seen.body["metadata"]["namespace"], observed.name
        names, attempt = ChildNames(name), int(previous.get("attempt") or 1)
        entry: dict[str, Any] = next((item for item in previous.get("attempts") or []
                                      if item.get("attempt") == attempt), {})
        if observed.job is not None or (entry.get("jobCreated") and not seen.terminal):
            # a vanished Job's pods too: the next attempt waits until they are gone
            observed.pods = [pod for pod in kube.list_owned(api, "v1", "pods", namespace, name)
                             if ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT) == str(attempt)]
        if observed.job is not None:
            if not seen.terminal and previous.get("phase") != "Running":
                observed.job_events = kube.list_events(api, namespace, "Job", names.job(attempt))
                pod_names = {(pod.get("metadata") or {}).get("name") for pod in observed.pods}
                observed.pod_events = [event for event in kube.list_events(api, namespace, "Pod")
                                       if (event.get("involvedObject") or {}).get("name") in pod_names] \
                    if pod_names else []
        elif not seen.terminal:
            if job.spec.devices.type == "npu" and settings.npu_runtime_class:
                runtime_class = kube.Ref("node.k8s.io/v1", "runtimeclasses", None, settings.npu_runtime_class)
                if kube.get(api, runtime_class) is None:
                    observed.missing_runtime_class = settings.npu_runtime_class
            observed.volume_error, seen.claim_warnings = claims.check_claims(api, job, namespace,
                                                                             seen.resolution.world_size)
        if settings.progress_reporting:
            observed.progress = _progress(kube.get(api, kube.Ref("v1", "configmaps", namespace, names.progress)))

    def _decide(self, seen: Seen) -> Plan:
        """What to write and create, from what was seen (``lifecycle.decide`` for an admitted QuantJob
        whose Job is its own). Pure: builds the children, calls nothing."""
        previous, resolution, now = seen.previous, seen.resolution, seen.now
        meta = seen.body["metadata"]
        if not resolution.ok or resolution.job is None:
            if previous.get("attempt"):
                return Plan(base={})  # it was admitted and has run; a changed operator policy does not undo that
            refused = invalid_status(resolution.problems, previous, now)
            return Plan(base={}, status=refused, events=self._phase_event(previous, refused))
        job, owner = resolution.job, owner_reference(seen.body)
        base: dict[str, Any] = {
            "runner": resolution.runner, "worldSize": resolution.world_size,
            "warnings": [str(p) for p in resolution.problems if p.severity == "warning"],
        }
        if meta.get("generation") is not None:
            base["observedGeneration"] = meta["generation"]
        setup = [] if seen.terminal else _owned(build_setup(job, resolution, self.settings, meta["namespace"]), owner)
        if seen.observed is None:  # observe stopped at a Job of this name that is not ours
            assert seen.conflict is not None
            blocked = {**base, **self._blocked(seen.conflict, previous, now)}
            return Plan(base=base, status=blocked, events=self._phase_event(previous, blocked), setup=setup)
        decision = decide(seen.observed)
        status = {**base, "warnings": [*base["warnings"], *seen.claim_warnings], **decision.status}
        if seen.terminal:
            status = {key: value for key, value in status.items() if key in decision.status}
        else:
            status["conditions"] = self._valid(status.get("conditions") or previous.get("conditions") or [], seen)
        attempt = [] if decision.create_attempt is None else _owned(
            build_attempt(job, resolution, self.settings, meta["namespace"], decision.create_attempt), owner)
        return Plan(base=base, status=status, events=list(decision.events), setup=setup,
                    create_attempt=decision.create_attempt, attempt=attempt, delete_job=decision.delete_job)

    def _act(self, seen: Seen, plan: Plan) -> None:
        """Perform the plan: ensure the shared children, create the new attempt's, stop a Job, write the
        status and its events. A child that cannot be created is reported in the status instead."""
        if plan.status is None:
            return
        api, previous, now = self.api(), seen.previous, seen.now
        meta = seen.body["metadata"]
        uid = meta.get("uid", "")
        status, events = dict(plan.status), list(plan.events)
        try:
            for child in plan.setup:
                kube.ensure(api, child, uid)
        except (kube.ChildConflict, kube.CreateRejected) as error:
            if isinstance(error, kube.CreateRejected) and not error.permanent and previous.get("attempt"):
                # a missing shared child that cannot be made now (a quota) must not hide what the running
                # attempt does: say so and go on with the plan
                status["warnings"] = [*plan.base["warnings"], f"{error}; retried at the next reconcile",
                                      *seen.claim_warnings]
            else:
                blocked = {**plan.base, **self._blocked(error, previous, now)}
                self._write(seen.body, previous, blocked, self._phase_event(previous, blocked))
                return
        if plan.create_attempt is not None:
            try:
                for child in plan.attempt:
                    kube.ensure(api, child, uid)
                for item in status.get("attempts") or []:
                    if item.get("attempt") == plan.create_attempt:
                        item["jobCreated"] = True  # from now on its Job's absence ends the attempt
            except (kube.ChildConflict, kube.CreateRejected) as error:
                blocked = self._blocked(error, previous, now)
                status.update(blocked)
                status["conditions"] = self._valid(status["conditions"], seen)
                events.append(("Warning", blocked["reason"], blocked["message"]))
        if plan.delete_job:
            kube.delete(api, kube.Ref("batch/v1", "jobs", meta["namespace"], plan.delete_job))
        self._write(seen.body, previous, status, events)

    @staticmethod
    def _valid(conditions: list[dict[str, Any]], seen: Seen) -> list[dict[str, Any]]:
        message = f"runner {seen.resolution.runner} on {seen.resolution.world_size} device(s)"
        return set_condition(conditions, "Valid", True, "Checked", message, seen.now)

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
               events: list[Event]) -> None:
        meta = body["metadata"]
        if changed(status, previous):
            kube.patch_quantjob_status(self.api(), meta["namespace"], meta["name"], status)
            if status.get("phase") != previous.get("phase") or status.get("reason") != previous.get("reason"):
                log.info("QuantJob %s/%s: %s (%s) %s", meta["namespace"], meta["name"], status.get("phase"),
                         status.get("reason"), status.get("message") or "")
            for type_, reason, message in events:
                kube.create_event(self.api(), body, type_, reason, message, self.clock())

    @staticmethod
    def _phase_event(previous: Mapping[str, Any], status: Mapping[str, Any]) -> list[Event]:
        if "phase" in status and (status.get("phase"), status.get("reason")) != \
                (previous.get("phase"), previous.get("reason")):
            kind = "Warning" if status.get("phase") == "Failed" or status.get("reason") == "ChildConflict" \
                else "Normal"
            return [(kind, str(status.get("reason") or status["phase"]), str(status.get("message") or ""))]
        return []


def _owned(children: list[Manifest], owner: dict[str, Any]) -> list[Manifest]:
    for child in children:
        child["metadata"]["ownerReferences"] = [owner]
    return children


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
