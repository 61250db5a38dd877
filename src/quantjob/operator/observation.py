"""One look at the cluster for one QuantJob (``Observed``, filled by the reconciler) and what it says
about the current attempt: why its Job failed (``classify_failure``), whether its pods have stopped so
the next attempt may start (``attempt_stopped``), how many ranks run, and why not every rank runs yet
(``pending_reason``). Pure functions over Kubernetes objects; ``lifecycle.decide`` acts on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quantjob.api.exit_codes import USER_ERRORS
from quantjob.operator.builders import RULE_DISRUPTION, RULE_FAILURE, RULE_USER_ERROR
from quantjob.operator.status import (
    job_condition,
    parse_time,
    pod_failure_message,
    pod_index,
    seconds_between,
    terminated_codes,
)

USER_ERROR, DISRUPTION, FAILURE, DEADLINE = "UserError", "Disruption", "Failure", "DeadlineExceeded"
_RULE_KINDS = {RULE_USER_ERROR: USER_ERROR, RULE_DISRUPTION: DISRUPTION, RULE_FAILURE: FAILURE}
_RULE_INDEX = re.compile(r"rule at index (\d+)")
_POD_IN_MESSAGE = re.compile(r"[Pp]od ([-a-z0-9.]+)/([-a-z0-9.]+)")
# Waiting reasons of a container that keep a rank from starting, most telling first.
_WAITING_REASONS = ("InvalidImageName", "ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff",
                    "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
_EVENT_REASONS = ("FailedMount", "FailedAttachVolume", "FailedScheduling")
# How long after its deletion a pod that never ends (its node unreachable) holds up the next attempt.
# Kubernetes' own node controller waits 300 s (the default not-ready/unreachable tolerations) before it
# even evicts such a pod; twice that leaves the grace period and a slow kubelet their time.
TERMINATING_BOUND_S = 600


@dataclass(frozen=True)
class Limits:
    world_size: int
    max_restarts: int
    max_disruptions: int
    startup_timeout_s: int
    active_deadline_s: int


@dataclass
class Observed:
    """One look at the cluster for one QuantJob (the reconciler fills it)."""

    name: str
    status: Mapping[str, Any]
    limits: Limits
    now: str
    job: Mapping[str, Any] | None = None          # the current attempt's Job
    pods: Sequence[Mapping[str, Any]] = ()        # the current attempt's pods
    job_events: Sequence[Mapping[str, Any]] = ()  # events about that Job
    pod_events: Sequence[Mapping[str, Any]] = ()  # events about its pods
    missing_runtime_class: str | None = None      # the configured RuntimeClass, when it does not exist
    progress: Mapping[str, Any] | None = None     # the worker's progress ConfigMap, parsed
    volume_error: str | None = None               # a claim the ranks cannot all mount (claims.py)


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str


def classify_failure(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Failure:
    """Why an attempt's Job failed: the matched pod failure policy rule, else the pods themselves."""
    job_status = job.get("status") or {}
    condition = job_condition(job_status, "Failed", "FailureTarget") or {}
    reason, message = str(condition.get("reason") or ""), str(condition.get("message") or "")
    culprit = _POD_IN_MESSAGE.search(message)
    prefer = culprit.group(2) if culprit else None
    kind: str | None = DEADLINE if reason == "DeadlineExceeded" else None
    disrupted = [pod for pod in pods if _disrupted(pod)]
    if kind is None and disrupted:
        # The Job controller names the first pod it matched; when one rank is drained or preempted its
        # peers exit non-zero at once (a lost collective), and may be matched first.
        kind = DISRUPTION
        prefer = (disrupted[0].get("metadata") or {}).get("name")
    if kind is None and reason == "PodFailurePolicy":
        rule = _RULE_INDEX.search(message)
        kind = _RULE_KINDS.get(int(rule.group(1))) if rule else None
    if kind is None:
        kind = USER_ERROR if any(code in USER_ERRORS for pod in pods for code in terminated_codes(pod)) else FAILURE
    codes = USER_ERRORS if kind == USER_ERROR else None
    text = pod_failure_message(pods, prefer=prefer, codes=codes) or pod_failure_message(pods, prefer=prefer)
    if kind == DISRUPTION and disrupted:
        condition = next(c for c in (disrupted[0].get("status") or {}).get("conditions") or []
                         if c.get("type") == "DisruptionTarget")
        text = (f"{_rank(disrupted[0])} was disrupted ({condition.get('reason') or 'DisruptionTarget'}"
                f"{': ' + str(condition['message']) if condition.get('message') else ''})")
    return Failure(kind, text or message or reason or "the Job failed")


def _disrupted(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _ended(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def attempt_stopped(job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], now: str,
                    since: str | None) -> tuple[bool, str]:
    """Whether the next attempt may start: every pod of this one has ended or is gone. A pod still
    Terminating ``TERMINATING_BOUND_S`` after its deletion (its node unreachable: the kubelet never
    confirms) is abandoned, and the note says which; ``since`` is when the attempt was seen to end,
    the start of the bound for pods not yet marked for deletion."""
    job_status = (job or {}).get("status") or {}
    if job is not None and job_condition(job_status, "Failed", "FailureTarget") is None:
        return False, ""
    running = [pod for pod in pods if not _ended(pod)]
    counted = int(job_status.get("active") or 0) + int(job_status.get("terminating") or 0)
    settled = job is None or job_condition(job_status, "Failed") is not None
    if not running and (settled and not counted):
        return True, ""
    stuck: list[str] = []
    for pod in running:
        began = (pod.get("metadata") or {}).get("deletionTimestamp") or since
        waited = seconds_between(began, now)
        if waited is None or waited <= TERMINATING_BOUND_S:
            return False, ""
        node = (pod.get("spec") or {}).get("nodeName")
        stuck.append(f"{_rank(pod)}{f' on node {node}' if node else ''} still terminating since {began}")
    if not stuck:  # the Job counts pods not listed yet
        waited = seconds_between(since, now)
        if waited is None or waited <= TERMINATING_BOUND_S:
            return False, ""
        stuck.append(f"{counted} pod(s) the Job still counts")
    return True, (f"abandoned after {TERMINATING_BOUND_S}s: {'; '.join(stuck)} (an unreachable node never "
                  "confirms; its rank cannot reach the new attempt's rendezvous, and the output lock stops it "
                  "writing alongside the new group)")


def pods_stopped(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> bool:
    """Every pod of a failed attempt has ended (Kubernetes sets ``Failed`` after terminating them)."""
    job_status = job.get("status") or {}
    if job_condition(job_status, "Failed") is None:
        return False
    if int(job_status.get("active") or 0) or int(job_status.get("terminating") or 0):
        return False
    return all(_ended(pod) for pod in pods)


def ready_ranks(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> int:
    job_status = job.get("status") or {}
    if job_status.get("ready") is not None:
        return int(job_status["ready"])
    return sum(1 for pod in pods if (pod.get("status") or {}).get("phase") == "Running")


def _rank(pod: Mapping[str, Any]) -> str:
    index = pod_index(pod)
    name = (pod.get("metadata") or {}).get("name")
    return f"rank {index} (pod {name})" if index is not None else f"pod {name}"


def _index_or_last(pod: Mapping[str, Any]) -> int:
    index = pod_index(pod)
    return index if index is not None else 1 << 30


def _event_time(event: Mapping[str, Any]) -> str | None:
    series = event.get("series") or {}
    return (event.get("lastTimestamp") or series.get("lastObservedTime") or event.get("eventTime")
            or event.get("firstTimestamp") or (event.get("metadata") or {}).get("creationTimestamp"))


def _current(event: Mapping[str, Any], obj: Mapping[str, Any] | None, since: str | None) -> bool:
    """An event about ``obj`` as it is now: not about an earlier object of the same name (uid), and
    not older than ``since`` (the attempt's start). Events live about an hour, so without this an
    earlier QuantJob's or attempt's troubles would be reported as today's."""
    uid = ((obj or {}).get("metadata") or {}).get("uid")
    about = (event.get("involvedObject") or {}).get("uid")
    if uid and about and uid != about:
        return False
    at, start = parse_time(_event_time(event)), parse_time(since)
    return at is None or start is None or at >= start


def _scheduled(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return bool((pod.get("spec") or {}).get("nodeName")) or any(
        c.get("type") == "PodScheduled" and c.get("status") == "True" for c in status.get("conditions") or [])


def _superseded(event: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether the pod's current state answers the event: scheduled since a FailedScheduling, its
    containers started since a FailedMount or FailedAttachVolume."""
    if event.get("reason") == "FailedScheduling":
        return _scheduled(pod)
    return (pod.get("status") or {}).get("phase") not in (None, "Pending")


def attempt_start(observed: Observed) -> str | None:
    """When the current attempt began: its Job's creation, else the operator's record of it."""
    created = ((observed.job or {}).get("metadata") or {}).get("creationTimestamp")
    attempt = int(observed.status.get("attempt") or 1)
    entry: Mapping[str, Any] = next((item for item in observed.status.get("attempts") or []
                                     if item.get("attempt") == attempt), {})
    return created or entry.get("startTime")


def pending_reason(observed: Observed) -> tuple[str, str]:
    """Why not every rank runs yet, from the pods' conditions and statuses and from events newer than
    the attempt that the pods' current state has not answered."""
    since = attempt_start(observed)
    job_status = (observed.job or {}).get("status") or {}
    made = max(len(observed.pods), sum(int(job_status.get(key) or 0) for key in ("active", "succeeded", "failed")))
    if made < observed.limits.world_size:  # a FailedCreate is answered once every pod exists
        for event in sorted(observed.job_events, key=lambda e: _event_time(e) or "", reverse=True):
            if event.get("reason") == "FailedCreate" and _current(event, observed.job, since):
                return "FailedCreate", str(event.get("message") or "")
    found: list[tuple[int, str, str]] = []
    for pod in sorted(observed.pods, key=_index_or_last):
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                message = str(condition.get("message") or condition.get("reason") or "")
                reason = "PersistentVolumeClaimPending" if "persistentvolumeclaim" in message.lower() else \
                    str(condition.get("reason") or "Unschedulable")
                found.append((0, reason, f"{_rank(pod)}: {message}"))
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _WAITING_REASONS:
                found.append((1, str(waiting["reason"]), f"{_rank(pod)}: {waiting.get('message') or waiting['reason']}"))
    pods_by_name = {(p.get("metadata") or {}).get("name"): p for p in observed.pods}
    for event in sorted(observed.pod_events, key=lambda e: _event_time(e) or "", reverse=True):
        subject = pods_by_name.get((event.get("involvedObject") or {}).get("name"))
        if event.get("reason") in _EVENT_REASONS and subject is not None and _current(event, subject, since) \
                and not _superseded(event, subject):
            found.append((2, str(event["reason"]), f"{_rank(subject)}: {event.get('message') or ''}"))
    if found:
        return min(found, key=lambda item: item[0])[1:]
    ready = ready_ranks(observed.job or {}, observed.pods)
    return "Starting", f"{ready} of {observed.limits.world_size} rank(s) running"
