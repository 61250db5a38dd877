"""What a QuantJob should be doing, decided from what is observed: one pure function, ``decide``.

An attempt is one Job running the whole group. Its pod failure policy (``builders.pod_failure_policy``)
ends it at the first failed rank; then, as JobSet's failure policy does for a set of Jobs:

- a user error (the worker's exit codes 2 and 3) fails the QuantJob with the worker's message;
- a disruption (preemption, eviction, node drain: ``DisruptionTarget``) starts a new attempt and
  counts against ``maxDisruptions`` only;
- any other failure starts a new attempt and counts against ``maxRestarts``;
- ``activeDeadlineSeconds`` running out fails the QuantJob.

A new attempt starts only once every pod of the previous one has stopped (like JobSet's
``BlockingRecreate``): no old rank can still write to the output or answer the new group. It gets a
new Job name, hence new hostnames and a fresh rendezvous, and the same output directory, so the
worker resumes at the last committed layer.

Phases: Pending (with a reason: Creating, Starting, Unschedulable, FailedCreate, ImagePullBackOff,
RuntimeClassNotFound, Suspended, Restarting, ...), Running only while every rank of the current
attempt runs (``Job.status.ready``), Succeeded, Failed (with a reason).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantjob.api.durations import format_duration
from quantjob.api.exit_codes import USER_ERRORS
from quantjob.operator.builders import (
    RULE_DISRUPTION,
    RULE_FAILURE,
    RULE_USER_ERROR,
    ChildNames,
)
from quantjob.operator.status import (
    MAX_MESSAGE,
    TERMINAL_PHASES,
    job_condition,
    parse_time,
    pod_failure_message,
    pod_index,
    seconds_between,
    set_condition,
    terminated_codes,
)

USER_ERROR, DISRUPTION, FAILURE, DEADLINE = "UserError", "Disruption", "Failure", "DeadlineExceeded"
_RULE_KINDS = {RULE_USER_ERROR: USER_ERROR, RULE_DISRUPTION: DISRUPTION, RULE_FAILURE: FAILURE}
OUTCOMES = {USER_ERROR: "UserError", DISRUPTION: "Disrupted", FAILURE: "Failed", DEADLINE: "DeadlineExceeded"}
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
# status.attempts keeps the latest attempts only (a QuantJob with maxDisruptions in the thousands must
# not outgrow an object); status.attempt is their count and attemptsOmitted how many were dropped.
MAX_ATTEMPTS_KEPT = 10


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


@dataclass
class Decision:
    status: dict[str, Any]
    create_attempt: int | None = None   # create this attempt's PodGroup and Job
    delete_job: str | None = None       # stop a Job (a group that never fully started)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


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


def _attempt_entry(attempts: list[dict[str, Any]], attempt: int) -> dict[str, Any] | None:
    return next((entry for entry in attempts if entry.get("attempt") == attempt), None)


def _count(value: Any, low: int = 0) -> int | None:
    """``value`` when it is a whole number >= ``low`` (a bool is not), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= low else None


def _finite(value: Any) -> float | None:
    """``value`` as a finite non-negative float, else None (NaN or Infinity would make every status
    patch invalid JSON, so the QuantJob's status would freeze)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _progress(observed: Observed, attempts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``status.progress`` from the worker's ConfigMap, each field checked (a field of the wrong type
    or out of range is dropped: the ConfigMap is written by a pod, never trusted); its resume point
    goes into its attempt. The ETA is the current attempt's measured mean seconds per layer (layers
    it resumed past excluded: the worker measures only the layers it ran) times the layers left."""
    data = observed.progress
    total = _count((data or {}).get("layersTotal"))
    if not data or total is None:
        return None
    done = _count(data.get("layersDone"))
    done = done if done is not None and done <= total else 0
    attempt = _count(data.get("attempt"), 1)
    entry = _attempt_entry(attempts, attempt) if attempt is not None else None
    resumed = _count(data.get("resumedFrom"))
    if entry is not None and resumed is not None and resumed <= total:
        entry["resumedFromLayer"] = resumed
    current = _count(data.get("currentLayer"))
    progress: dict[str, Any] = {
        "layersDone": done, "layersTotal": total, "summary": f"{done}/{total}",
        "currentLayer": current if current is not None and current <= total else None,
        "lastLayerError": _finite(data.get("lastLayerError")), "attempt": attempt}
    per_layer = _finite(data.get("secondsPerLayer"))
    if per_layer is not None and per_layer > 0 and attempt == int(observed.status.get("attempt") or 1):
        left = per_layer * (total - done)
        progress.update(secondsPerLayer=round(per_layer, 3), etaSeconds=round(left),
                        eta=format_duration(left) if done < total else "done")
    return {key: value for key, value in progress.items() if value is not None}


def decide(observed: Observed) -> Decision:
    """The status to write and the actions to take, for a QuantJob that passed its review."""
    prev = dict(observed.status)
    limits, now, names = observed.limits, observed.now, ChildNames(observed.name)
    attempts = [dict(entry) for entry in prev.get("attempts") or []]
    attempt = int(prev.get("attempt") or 1)
    towards = int(prev.get("restartsCountTowardsMax") or 0)
    disruptions = int(prev.get("disruptions") or 0)
    decision = Decision(status={})
    phase, reason, message = str(prev.get("phase") or "Pending"), str(prev.get("reason") or ""), ""
    job_status: Mapping[str, Any] = (observed.job or {}).get("status") or {}
    ready = ready_ranks(observed.job, observed.pods) if observed.job is not None else 0

    def finish(entry: dict[str, Any] | None, outcome: str, text: str) -> None:
        if entry is not None and not entry.get("outcome"):
            entry.update(outcome=outcome, message=text[:MAX_MESSAGE], completionTime=now)

    def ended(entry: dict[str, Any], failure: Failure) -> tuple[str, str, str]:
        """The current attempt ended with ``failure``: fail, or start the next attempt once its pods
        are gone (or abandoned past the bound), or wait for them."""
        nonlocal attempt, towards, disruptions
        phase_, reason_, message_ = _after_failure(failure, attempt, towards, disruptions, limits)
        if phase_ == "Failed":
            finish(entry, OUTCOMES[failure.kind], failure.message)
            return phase_, reason_, message_
        entry.setdefault("endedTime", now)
        stopped, note = attempt_stopped(observed.job, observed.pods, now, entry.get("endedTime"))
        if not stopped:
            return phase_, reason_, (f"attempt {attempt} ended ({failure.kind}): {failure.message}; waiting for "
                                     f"its pods to stop before attempt {attempt + 1}")
        finish(entry, OUTCOMES[failure.kind], failure.message + (f"; {note}" if note else ""))
        if failure.kind == DISRUPTION:
            disruptions += 1
        else:
            towards += 1
        attempt += 1
        attempts.append({"attempt": attempt, "job": names.job(attempt), "startTime": now})
        decision.create_attempt = attempt
        text = (f"attempt {attempt - 1} ended ({failure.kind}): {failure.message}"
                f"{'; ' + note if note else ''}; started attempt {attempt}, which resumes at the last "
                "committed layer")
        decision.events.append(("Warning", "Restarting", text))
        return phase_, reason_, text

    current = _attempt_entry(attempts, attempt)
    if phase in TERMINAL_PHASES:
        pass  # finished: only progress is still mirrored
    elif observed.job is None and current is not None and current.get("jobCreated") and not current.get("outcome"):
        # The attempt's Job is gone (deleted by hand, or by a garbage collector): never create it again
        # under its name while its pods may still run; the next attempt gets a new name.
        phase, reason, message = ended(current, Failure(FAILURE, f"Job {names.job(attempt)} was deleted while "
                                                                 "the attempt ran"))
    elif observed.job is None and observed.volume_error:
        phase, reason, message = "Failed", "VolumeAccessMode", observed.volume_error
    elif observed.job is None:
        if observed.missing_runtime_class:
            phase, reason = "Pending", "RuntimeClassNotFound"
            message = (f"RuntimeClass {observed.missing_runtime_class!r} (operator setting "
                       "QUANTJOB_NPU_RUNTIME_CLASS) does not exist, so the API server would refuse every pod; "
                       "create it, or set the setting to '' where Ascend's runtime is the default runtime "
                       "(MindCluster)")
        else:
            if current is None:
                attempts.append({"attempt": attempt, "job": names.job(attempt), "startTime": now})
            decision.create_attempt = attempt
            phase, reason, message = "Pending", "Creating", f"creating Job {names.job(attempt)}"
    else:
        entry = current
        if entry is None:  # the status was lost; the Job is the truth
            entry = {"attempt": attempt, "job": names.job(attempt), "startTime": now}
            attempts.append(entry)
        entry["jobCreated"] = True
        complete = job_condition(job_status, "SuccessCriteriaMet", "Complete")
        failed = job_condition(job_status, "Failed", "FailureTarget")
        suspended = job_condition(job_status, "Suspended")
        if complete:
            phase, reason, message = "Succeeded", "Completed", f"all {limits.world_size} rank(s) finished"
            finish(entry, "Succeeded", message)
        elif failed:
            phase, reason, message = ended(entry, classify_failure(observed.job, observed.pods))
        elif suspended:
            phase, reason = "Pending", "Suspended"
            message = str(suspended.get("message") or "the Job is suspended (waiting in its queue)")
        else:
            if ready >= limits.world_size or (entry.get("readyTime") and ready > 0):
                phase, reason = "Running", "Running"
                message = f"{ready} of {limits.world_size} rank(s) running"
                entry.setdefault("readyTime", now)
            else:
                phase = "Pending"
                reason, message = pending_reason(observed)
                started = job_status.get("startTime") or entry.get("startTime")
                waited = seconds_between(started, now)
                if not entry.get("readyTime") and waited is not None and waited > limits.startup_timeout_s:
                    phase, reason = "Failed", "StartupTimeout"
                    message = (f"not every rank ran within startupTimeoutSeconds ({limits.startup_timeout_s}s) "
                               f"of attempt {attempt}; last reason: {message}")
                    finish(entry, "StartupTimeout", message)
                    decision.delete_job = names.job(attempt)  # free the devices a partial group holds

    progress = _progress(observed, attempts)
    omitted = int(prev.get("attemptsOmitted") or 0) + max(len(attempts) - MAX_ATTEMPTS_KEPT, 0)
    attempts = attempts[-MAX_ATTEMPTS_KEPT:]
    status: dict[str, Any] = {
        "phase": phase, "reason": reason, "message": message[:MAX_MESSAGE] if message else prev.get("message"),
        "job": names.job(attempt), "attempt": attempt, "restarts": towards + disruptions,
        "restartsCountTowardsMax": towards, "disruptions": disruptions, "attempts": attempts,
    }
    if omitted:
        status["attemptsOmitted"] = omitted
    if decision.create_attempt is not None:
        ready = 0  # the new attempt's Job has no pods yet
    status["ready"] = ready
    status["readySummary"] = f"{ready}/{limits.world_size}"
    if progress is not None:
        status["progress"] = progress
    if job_status.get("startTime") and not prev.get("startTime"):
        status["startTime"] = job_status["startTime"]
    if phase in TERMINAL_PHASES and not prev.get("completionTime"):
        status["completionTime"] = job_status.get("completionTime") or now
    status["conditions"] = _conditions(prev, phase, reason, message, job_status, ready, limits, now)
    if phase in TERMINAL_PHASES and prev.get("phase") in TERMINAL_PHASES:
        # finished earlier: keep what was decided then, refresh progress only
        status = {key: value for key, value in status.items() if key in ("progress", "attempts", "attemptsOmitted")}
    elif (phase, reason) != (prev.get("phase"), prev.get("reason")) and reason not in ("Creating", "Starting"):
        kind = "Warning" if phase == "Failed" or (phase == "Pending" and reason not in ("Suspended", "Restarting")) \
            else "Normal"
        if reason != "Restarting" or not decision.events:
            decision.events.append((kind, reason, message or phase))
    decision.status = status
    return decision


def _after_failure(failure: Failure, attempt: int, towards: int, disruptions: int,
                   limits: Limits) -> tuple[str, str, str]:
    """(phase, reason, message) once attempt ``attempt`` failed with ``failure``."""
    if failure.kind == USER_ERROR:
        return "Failed", "UserError", failure.message
    if failure.kind == DEADLINE:
        return "Failed", "DeadlineExceeded", (f"attempt {attempt} ran longer than activeDeadlineSeconds "
                                              f"({limits.active_deadline_s}s): {failure.message}")
    if failure.kind == DISRUPTION and disruptions >= limits.max_disruptions:
        return "Failed", "DisruptionsExhausted", (f"{disruptions + 1} disruption(s), maxDisruptions is "
                                                  f"{limits.max_disruptions}; last: {failure.message}")
    if failure.kind == FAILURE and towards >= limits.max_restarts:
        return "Failed", "RestartsExhausted", (f"attempt {attempt} failed after {towards} restart(s) "
                                               f"(maxRestarts {limits.max_restarts}): {failure.message}")
    return "Pending", "Restarting", ""


def _conditions(prev: Mapping[str, Any], phase: str, reason: str, message: str, job_status: Mapping[str, Any],
                ready: int, limits: Limits, now: str) -> list[dict[str, Any]]:
    conditions = list(prev.get("conditions") or [])
    suspended = job_condition(job_status, "Suspended")
    conditions = set_condition(conditions, "Suspended", bool(suspended) and phase == "Pending",
                               (suspended or {}).get("reason") or ("JobSuspended" if suspended else "NotSuspended"),
                               (suspended or {}).get("message") or "", now)
    conditions = set_condition(conditions, "Running", phase == "Running", "AllRanksRunning" if phase == "Running"
                               else "NotAllRanksRunning", f"{ready} of {limits.world_size} rank(s) running", now)
    conditions = set_condition(conditions, "Complete", phase == "Succeeded",
                               "JobComplete" if phase == "Succeeded" else "NotComplete",
                               message if phase == "Succeeded" else "", now)
    conditions = set_condition(conditions, "Failed", phase == "Failed", reason if phase == "Failed" else "NotFailed",
                               message if phase == "Failed" else "", now)
    return conditions
