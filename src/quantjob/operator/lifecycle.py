"""What a QuantJob should be doing, decided from what is observed: one pure function, ``decide``,
which names the observed ``State`` (``observed_state``) and hands it to that state's function
(``DECIDE``: one short function per state, named for it), then writes the status from its verdict.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from quantjob.api.durations import format_duration
from quantjob.operator.builders import ChildNames
from quantjob.operator.observation import (
    DEADLINE,
    DISRUPTION,
    FAILURE,
    USER_ERROR,
    Failure,
    Limits,
    Observed,
    attempt_stopped,
    classify_failure,
    pending_reason,
    ready_ranks,
)
from quantjob.operator.status import (
    MAX_MESSAGE,
    TERMINAL_PHASES,
    job_condition,
    seconds_between,
    set_condition,
)

OUTCOMES = {USER_ERROR: "UserError", DISRUPTION: "Disrupted", FAILURE: "Failed", DEADLINE: "DeadlineExceeded"}

# status.attempts keeps the latest attempts only (a QuantJob with maxDisruptions in the thousands must
# not outgrow an object); status.attempt is their count and attemptsOmitted how many were dropped.
MAX_ATTEMPTS_KEPT = 10


@dataclass
class Decision:
    status: dict[str, Any]
    create_attempt: int | None = None   # create this attempt's PodGroup and Job
    delete_job: str | None = None       # stop a Job (a group that never fully started)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


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


class State(str, Enum):
    """What one look at a QuantJob found; ``decide`` hands each to the function of the same name."""

    FINISHED = "finished"                  # Succeeded or Failed earlier: only progress is mirrored
    JOB_VANISHED = "job_vanished"          # the attempt's Job was deleted while the attempt ran
    VOLUME_REFUSED = "volume_refused"      # a claim the ranks cannot all mount
    RUNTIME_CLASS_MISSING = "runtime_class_missing"  # the API server would refuse every pod
    NO_JOB = "no_job"                      # the attempt's Job is to be created
    JOB_COMPLETE = "job_complete"
    JOB_FAILED = "job_failed"              # or about to (FailureTarget)
    JOB_SUSPENDED = "job_suspended"        # waiting in its queue (Kueue)
    RUNNING = "running"                    # every rank runs (or ran, and the rest finished)
    STARTING = "starting"                  # not every rank runs yet


class Verdict(NamedTuple):
    phase: str
    reason: str
    message: str  # "" keeps the previous status message


@dataclass
class _Step:
    """What ``decide`` works on: the observation, and the attempt counters a state may advance."""

    observed: Observed
    attempts: list[dict[str, Any]]
    attempt: int
    towards: int        # restarts that count towards maxRestarts
    disruptions: int
    ready: int
    decision: Decision = field(default_factory=lambda: Decision(status={}))

    @classmethod
    def of(cls, observed: Observed) -> _Step:
        prev = observed.status
        return cls(observed=observed, attempts=[dict(entry) for entry in prev.get("attempts") or []],
                   attempt=int(prev.get("attempt") or 1), towards=int(prev.get("restartsCountTowardsMax") or 0),
                   disruptions=int(prev.get("disruptions") or 0),
                   ready=ready_ranks(observed.job, observed.pods) if observed.job is not None else 0)

    @property
    def names(self) -> ChildNames:
        return ChildNames(self.observed.name)

    @property
    def job_status(self) -> Mapping[str, Any]:
        return (self.observed.job or {}).get("status") or {}

    @property
    def current(self) -> dict[str, Any] | None:
        """The current attempt's entry in ``status.attempts``; None when the status does not have it."""
        return _attempt_entry(self.attempts, self.attempt)

    def add_entry(self) -> dict[str, Any]:
        """A new entry in ``status.attempts`` for the current attempt, starting now."""
        entry = {"attempt": self.attempt, "job": self.names.job(self.attempt), "startTime": self.observed.now}
        self.attempts.append(entry)
        return entry

    def job_entry(self) -> dict[str, Any]:
        """The current attempt's entry once its Job exists (made again when the status was lost: the
        Job is the truth)."""
        entry = self.current or self.add_entry()
        entry["jobCreated"] = True
        return entry

    def finish(self, entry: dict[str, Any] | None, outcome: str, text: str) -> None:
        if entry is not None and not entry.get("outcome"):
            entry.update(outcome=outcome, message=text[:MAX_MESSAGE], completionTime=self.observed.now)


def observed_state(observed: Observed) -> State:
    """Which of the states ``decide`` knows the observation is in (first match wins)."""
    step = _Step.of(observed)
    current, job_status = step.current, step.job_status
    if str(observed.status.get("phase") or "Pending") in TERMINAL_PHASES:
        return State.FINISHED
    if observed.job is None:
        if current is not None and current.get("jobCreated") and not current.get("outcome"):
            return State.JOB_VANISHED
        if observed.volume_error:
            return State.VOLUME_REFUSED
        return State.RUNTIME_CLASS_MISSING if observed.missing_runtime_class else State.NO_JOB
    if job_condition(job_status, "SuccessCriteriaMet", "Complete"):
        return State.JOB_COMPLETE
    if job_condition(job_status, "Failed", "FailureTarget"):
        return State.JOB_FAILED
    if job_condition(job_status, "Suspended"):
        return State.JOB_SUSPENDED
    ran = bool((current or {}).get("readyTime")) and step.ready > 0
    return State.RUNNING if step.ready >= observed.limits.world_size or ran else State.STARTING


def finished(step: _Step) -> Verdict:
    prev = step.observed.status
    return Verdict(str(prev.get("phase")), str(prev.get("reason") or ""), "")


def job_vanished(step: _Step) -> Verdict:
    """Never create the Job again under its name while its pods may still run: the attempt ended, and
    the next one gets a new name."""
    failure = Failure(FAILURE, f"Job {step.names.job(step.attempt)} was deleted while the attempt ran")
    return attempt_ended(step, step.job_entry(), failure)


def volume_refused(step: _Step) -> Verdict:
    return Verdict("Failed", "VolumeAccessMode", step.observed.volume_error or "")


def runtime_class_missing(step: _Step) -> Verdict:
    return Verdict("Pending", "RuntimeClassNotFound", (
        f"RuntimeClass {step.observed.missing_runtime_class!r} (operator setting QUANTJOB_NPU_RUNTIME_CLASS) "
        "does not exist, so the API server would refuse every pod; create it, or set the setting to '' where "
        "Ascend's runtime is the default runtime (MindCluster)"))


def no_job(step: _Step) -> Verdict:
    if step.current is None:
        step.add_entry()
    step.decision.create_attempt = step.attempt
    return Verdict("Pending", "Creating", f"creating Job {step.names.job(step.attempt)}")


def job_complete(step: _Step) -> Verdict:
    message = f"all {step.observed.limits.world_size} rank(s) finished"
    step.finish(step.job_entry(), "Succeeded", message)
    return Verdict("Succeeded", "Completed", message)


def job_failed(step: _Step) -> Verdict:
    entry = step.job_entry()
    return attempt_ended(step, entry, classify_failure(step.observed.job or {}, step.observed.pods))


def job_suspended(step: _Step) -> Verdict:
    step.job_entry()
    suspended = job_condition(step.job_status, "Suspended") or {}
    return Verdict("Pending", "Suspended", str(suspended.get("message") or "the Job is suspended (waiting in its queue)"))


def running(step: _Step) -> Verdict:
    step.job_entry().setdefault("readyTime", step.observed.now)
    return Verdict("Running", "Running", f"{step.ready} of {step.observed.limits.world_size} rank(s) running")


def starting(step: _Step) -> Verdict:
    """Not every rank runs yet: say why, and fail a group that never fully started within
    ``startupTimeoutSeconds`` (deleting its Job frees the devices a partial group holds)."""
    entry, limits, now = step.job_entry(), step.observed.limits, step.observed.now
    reason, message = pending_reason(step.observed)
    waited = seconds_between(step.job_status.get("startTime") or entry.get("startTime"), now)
    if entry.get("readyTime") or waited is None or waited <= limits.startup_timeout_s:
        return Verdict("Pending", reason, message)
    message = (f"not every rank ran within startupTimeoutSeconds ({limits.startup_timeout_s}s) of attempt "
               f"{step.attempt}; last reason: {message}")
    step.finish(entry, "StartupTimeout", message)
    step.decision.delete_job = step.names.job(step.attempt)
    return Verdict("Failed", "StartupTimeout", message)


def attempt_ended(step: _Step, entry: dict[str, Any], failure: Failure) -> Verdict:
    """The current attempt ended with ``failure``: fail, or start the next attempt once its pods are
    gone (or abandoned past the bound), or wait for them."""
    verdict = _after_failure(failure, step.attempt, step.towards, step.disruptions, step.observed.limits)
    if verdict.phase == "Failed":
        step.finish(entry, OUTCOMES[failure.kind], failure.message)
        return verdict
    observed, attempt = step.observed, step.attempt
    entry.setdefault("endedTime", observed.now)
    stopped, note = attempt_stopped(observed.job, observed.pods, observed.now, entry.get("endedTime"))
    if not stopped:
        return verdict._replace(message=f"attempt {attempt} ended ({failure.kind}): {failure.message}; waiting "
                                        f"for its pods to stop before attempt {attempt + 1}")
    step.finish(entry, OUTCOMES[failure.kind], failure.message + (f"; {note}" if note else ""))
    if failure.kind == DISRUPTION:
        step.disruptions += 1
    else:
        step.towards += 1
    step.attempt += 1
    step.add_entry()
    step.decision.create_attempt = step.attempt
    text = (f"attempt {attempt} ended ({failure.kind}): {failure.message}{'; ' + note if note else ''}; "
            f"started attempt {attempt + 1}, which resumes at the last committed layer")
    step.decision.events.append(("Warning", "Restarting", text))
    return verdict._replace(message=text)


DECIDE: dict[State, Callable[[_Step], Verdict]] = {
    State.FINISHED: finished, State.JOB_VANISHED: job_vanished, State.VOLUME_REFUSED: volume_refused,
    State.RUNTIME_CLASS_MISSING: runtime_class_missing, State.NO_JOB: no_job, State.JOB_COMPLETE: job_complete,
    State.JOB_FAILED: job_failed, State.JOB_SUSPENDED: job_suspended, State.RUNNING: running,
    State.STARTING: starting,
}


def decide(observed: Observed) -> Decision:
    """The status to write and the actions to take, for a QuantJob that passed its review: the
    function of the observed state (``DECIDE``) moves the attempt on, then the status is written from
    the verdict."""
    step = _Step.of(observed)
    verdict = DECIDE[observed_state(observed)](step)
    step.decision.status = _status(step, verdict)
    _phase_event(step, verdict)
    return step.decision


def _status(step: _Step, verdict: Verdict) -> dict[str, Any]:
    """``status`` after ``verdict``: counters, the latest attempts, readiness, progress, conditions;
    a QuantJob that finished earlier keeps what was decided then and refreshes progress only."""
    prev, limits, now, job_status = step.observed.status, step.observed.limits, step.observed.now, step.job_status
    phase, reason, message = verdict
    progress = _progress(step.observed, step.attempts)
    omitted = int(prev.get("attemptsOmitted") or 0) + max(len(step.attempts) - MAX_ATTEMPTS_KEPT, 0)
    ready = 0 if step.decision.create_attempt is not None else step.ready  # a new attempt's Job has no pods yet
    status: dict[str, Any] = {
        "phase": phase, "reason": reason, "message": message[:MAX_MESSAGE] if message else prev.get("message"),
        "job": step.names.job(step.attempt), "attempt": step.attempt, "restarts": step.towards + step.disruptions,
        "restartsCountTowardsMax": step.towards, "disruptions": step.disruptions,
        "attempts": step.attempts[-MAX_ATTEMPTS_KEPT:],
    }
    if omitted:
        status["attemptsOmitted"] = omitted
    status["ready"], status["readySummary"] = ready, f"{ready}/{limits.world_size}"
    if progress is not None:
        status["progress"] = progress
    if job_status.get("startTime") and not prev.get("startTime"):
        status["startTime"] = job_status["startTime"]
    if phase in TERMINAL_PHASES and not prev.get("completionTime"):
        status["completionTime"] = job_status.get("completionTime") or now
    status["conditions"] = _conditions(prev, phase, reason, message, job_status, ready, limits, now)
    if phase in TERMINAL_PHASES and prev.get("phase") in TERMINAL_PHASES:
        return {key: value for key, value in status.items() if key in ("progress", "attempts", "attemptsOmitted")}
    return status


def _phase_event(step: _Step, verdict: Verdict) -> None:
    """An event for a new (phase, reason), but for the routine ones and a restart already announced."""
    prev, (phase, reason, message) = step.observed.status, verdict
    if phase in TERMINAL_PHASES and prev.get("phase") in TERMINAL_PHASES:
        return
    if (phase, reason) == (prev.get("phase"), prev.get("reason")) or reason in ("Creating", "Starting"):
        return
    kind = "Warning" if phase == "Failed" or (phase == "Pending" and reason not in ("Suspended", "Restarting")) \
        else "Normal"
    if reason != "Restarting" or not step.decision.events:
        step.decision.events.append((kind, reason, message or phase))


def _after_failure(failure: Failure, attempt: int, towards: int, disruptions: int,
                   limits: Limits) -> Verdict:
    """The verdict once attempt ``attempt`` failed with ``failure``: final, or a restart."""
    if failure.kind == USER_ERROR:
        return Verdict("Failed", "UserError", failure.message)
    if failure.kind == DEADLINE:
        return Verdict("Failed", "DeadlineExceeded", f"attempt {attempt} ran longer than activeDeadlineSeconds "
                                                     f"({limits.active_deadline_s}s): {failure.message}")
    if failure.kind == DISRUPTION and disruptions >= limits.max_disruptions:
        return Verdict("Failed", "DisruptionsExhausted", f"{disruptions + 1} disruption(s), maxDisruptions is "
                                                         f"{limits.max_disruptions}; last: {failure.message}")
    if failure.kind == FAILURE and towards >= limits.max_restarts:
        return Verdict("Failed", "RestartsExhausted", f"attempt {attempt} failed after {towards} restart(s) "
                                                      f"(maxRestarts {limits.max_restarts}): {failure.message}")
    return Verdict("Pending", "Restarting", "")


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
