"""QuantJob status from its Job's status: pure functions (no API calls, the clock is a parameter).

Condition types on a QuantJob: ``Valid`` (the compatibility check), ``Suspended`` (a queue holds the
Job), ``Running``, ``Complete`` and ``Failed``. ``status.progress`` belongs to the worker's rank 0 and
never appears in what these functions return, so a merge patch of their result leaves it alone.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from quantjob.api.check import Resolution
from quantjob.api.problems import Problem

Status = dict[str, Any]
COMPLETION_INDEX_KEYS = ("batch.kubernetes.io/job-completion-index",)
MAX_MESSAGE = 1024  # condition messages stay readable in `kubectl describe`


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(conditions: Sequence[Mapping[str, Any]], type_: str, status: bool, reason: str,
                  message: str, now: str) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; ``lastTransitionTime`` moves only when the status flips."""
    value = "True" if status else "False"
    result: list[dict[str, Any]] = []
    found = False
    for item in conditions:
        item = dict(item)
        if item.get("type") == type_:
            found = True
            since = item.get("lastTransitionTime") if item.get("status") == value else now
            item = {"type": type_, "status": value, "reason": reason, "message": message[:MAX_MESSAGE],
                    "lastTransitionTime": since or now}
        result.append(item)
    if not found:
        result.append({"type": type_, "status": value, "reason": reason, "message": message[:MAX_MESSAGE],
                       "lastTransitionTime": now})
    return result


def invalid_status(problems: Iterable[Problem], previous: Mapping[str, Any], now: str) -> Status:
    """Status of a QuantJob that failed the check: no children, phase Failed, reason Invalid."""
    problems = list(problems)
    errors = "; ".join(str(p) for p in problems if p.severity == "error")
    conditions = previous.get("conditions") or []
    conditions = set_condition(conditions, "Valid", False, "Invalid", errors, now)
    conditions = set_condition(conditions, "Failed", True, "Invalid", errors, now)
    return {"phase": "Failed", "conditions": conditions, "completionTime": now,
            "warnings": [str(p) for p in problems if p.severity == "warning"]}


def accepted_status(resolution: Resolution, job_name: str, previous: Mapping[str, Any], now: str) -> Status:
    """Status right after the children were created: runner, world size, warnings, phase Pending."""
    warnings = [str(p) for p in resolution.problems if p.severity == "warning"]
    message = f"runner {resolution.runner} on {resolution.world_size} device(s)"
    conditions = set_condition(previous.get("conditions") or [], "Valid", True, "Checked", message, now)
    status: Status = {"runner": resolution.runner, "worldSize": resolution.world_size, "job": job_name,
                      "warnings": warnings, "conditions": conditions}
    if not previous.get("phase"):
        status["phase"] = "Pending"
    return status


def _job_condition(job_status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for item in job_status.get("conditions") or []:
        if item.get("type") == type_ and item.get("status") == "True":
            return item
    return None


def job_phase(job_status: Mapping[str, Any]) -> str:
    """Pending, Running, Succeeded or Failed, from a batch/v1 Job's ``status``."""
    if _job_condition(job_status, "Failed") or _job_condition(job_status, "FailureTarget"):
        return "Failed"
    if _job_condition(job_status, "Complete") or _job_condition(job_status, "SuccessCriteriaMet"):
        return "Succeeded"
    if _job_condition(job_status, "Suspended"):
        return "Pending"
    # Started and not finished is Running, also while no pod is active for a moment (a rank being
    # replaced after a failure, or the controller still counting finished pods).
    if int(job_status.get("active") or 0) > 0 or job_status.get("startTime"):
        return "Running"
    return "Pending"


def pod_failure_message(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The first failed rank's termination message (lowest completion index), or None."""
    failures: list[tuple[int, str]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        index_text = next((source[key] for source in (meta.get("labels") or {}, meta.get("annotations") or {})
                           for key in COMPLETION_INDEX_KEYS if key in source), None)
        index = int(index_text) if index_text is not None and str(index_text).isdigit() else 1 << 30
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated and int(terminated.get("exitCode") or 0) != 0:
                text = (terminated.get("message") or terminated.get("reason") or "").strip()
                rank = f"rank {index}" if index < 1 << 30 else "a rank"
                line = f"{rank} (pod {meta.get('name')}) exited with code {terminated.get('exitCode')}: {text}"
                failures.append((index, line))
    return min(failures)[1] if failures else None


def mirror_job(job_status: Mapping[str, Any], world_size: int, previous: Mapping[str, Any],
               pod_message: str | None, now: str) -> Status:
    """The QuantJob status fields that follow the Job: phase, conditions, start and completion time."""
    phase = job_phase(job_status)
    active = int(job_status.get("active") or 0)
    succeeded = int(job_status.get("succeeded") or 0)
    conditions = list(previous.get("conditions") or [])
    suspended = _job_condition(job_status, "Suspended")
    conditions = set_condition(conditions, "Suspended", bool(suspended), (suspended or {}).get("reason") or
                               ("JobSuspended" if suspended else "NotSuspended"),
                               (suspended or {}).get("message") or "", now)
    conditions = set_condition(conditions, "Running", phase == "Running", "PodsActive" if phase == "Running"
                               else "NoPodsActive", f"{active} of {world_size} rank(s) running, "
                                                    f"{succeeded} finished", now)
    complete = _job_condition(job_status, "Complete") or _job_condition(job_status, "SuccessCriteriaMet")
    conditions = set_condition(conditions, "Complete", phase == "Succeeded",
                               "JobComplete" if complete else "NotComplete",
                               f"all {world_size} rank(s) finished" if complete else "", now)
    failed = _job_condition(job_status, "Failed") or _job_condition(job_status, "FailureTarget")
    failed_message = pod_message or (failed or {}).get("message") or ""
    conditions = set_condition(conditions, "Failed", phase == "Failed",
                               (failed or {}).get("reason") or ("JobFailed" if failed else "NotFailed"),
                               failed_message if failed else "", now)
    status: Status = {"phase": phase, "conditions": conditions}
    if job_status.get("startTime"):
        status["startTime"] = job_status["startTime"]
    finished = job_status.get("completionTime") or (failed or {}).get("lastTransitionTime")
    if phase in ("Succeeded", "Failed"):
        status["completionTime"] = finished or previous.get("completionTime") or now
    return status


def changed(update: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether merge-patching ``update`` into ``current`` would change anything."""
    return any(current.get(key) != value for key, value in update.items())
