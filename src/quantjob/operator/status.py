"""Small pure helpers for QuantJob status: conditions, times, pods' messages (no API calls).

Condition types on a QuantJob: ``Valid`` (the compatibility check), ``Suspended`` (a queue holds
the Job), ``Running`` (every rank runs), ``Complete`` and ``Failed``. ``status.progress`` is
mirrored from the worker's progress ConfigMap by the reconciler.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from quantjob.api.problems import Problem

Status = dict[str, Any]
COMPLETION_INDEX_KEYS = ("batch.kubernetes.io/job-completion-index",)
MAX_MESSAGE = 1024  # condition messages stay readable in `kubectl describe`
TERMINAL_PHASES = ("Succeeded", "Failed")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def seconds_between(start: str | None, end: str) -> float | None:
    begin, finish = parse_time(start), parse_time(end)
    return None if begin is None or finish is None else (finish - begin).total_seconds()


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
    return {"phase": "Failed", "reason": "Invalid", "message": errors[:MAX_MESSAGE], "conditions": conditions,
            "completionTime": previous.get("completionTime") or now,
            "warnings": [str(p) for p in problems if p.severity == "warning"]}


def job_condition(job_status: Mapping[str, Any], *types: str) -> Mapping[str, Any] | None:
    """The first condition of ``types`` that is True, in the order given."""
    for type_ in types:
        for item in job_status.get("conditions") or []:
            if item.get("type") == type_ and item.get("status") == "True":
                return item
    return None


def pod_index(pod: Mapping[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    text = next((source[key] for source in (meta.get("labels") or {}, meta.get("annotations") or {})
                 for key in COMPLETION_INDEX_KEYS if key in source), None)
    return int(text) if text is not None and str(text).isdigit() else None


def terminated_codes(pod: Mapping[str, Any]) -> list[int]:
    """Exit codes of the pod's terminated containers."""
    codes = []
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            codes.append(int(terminated.get("exitCode") or 0))
    return codes


def pod_failure_message(pods: Iterable[Mapping[str, Any]], prefer: str | None = None,
                        codes: Iterable[int] | None = None) -> str | None:
    """A failed rank's termination message: pod ``prefer`` if it failed, else among pods that exited
    with one of ``codes`` (any non-zero code when None) the lowest completion index; None if none."""
    wanted = set(codes) if codes is not None else None
    failures: list[tuple[int, int, str]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        index = pod_index(pod)
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            code = int(terminated.get("exitCode") or 0)
            if not terminated or code == 0 or (wanted is not None and code not in wanted):
                continue
            text = (terminated.get("message") or terminated.get("reason") or "").strip()
            rank = f"rank {index}" if index is not None else "a rank"
            line = f"{rank} (pod {meta.get('name')}) exited with code {code}: {text}"
            failures.append((0 if meta.get("name") == prefer else 1, index if index is not None else 1 << 30, line))
    return min(failures)[2] if failures else None


def changed(update: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether merge-patching ``update`` into ``current`` would change anything."""
    return any(current.get(key) != value for key, value in update.items())
