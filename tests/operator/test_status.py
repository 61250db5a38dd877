"""What a QuantJob should do, from what is observed: ``lifecycle.decide`` and what it reads of the
observation (``observation``), all pure."""

from __future__ import annotations

from typing import Any

from quantjob.api.problems import Problem
from quantjob.operator.lifecycle import DECIDE, State, decide, observed_state
from quantjob.operator.observation import Limits, Observed, classify_failure, pending_reason
from quantjob.operator.status import (
    changed,
    invalid_status,
    pod_failure_message,
    set_condition,
)

T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z"
LIMITS = Limits(world_size=2, max_restarts=2, max_disruptions=1, startup_timeout_s=600, active_deadline_s=3600)


def cond(type_: str, reason: str = "", message: str = "", status: str = "True") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}


def by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def pod(index: int, code: int | None = None, message: str = "", phase: str | None = None,
        conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    state = {"terminated": {"exitCode": code, "message": message}} if code is not None else {"running": {}}
    return {"metadata": {"name": f"q-a1-{index}-x", "labels": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "status": {"phase": phase or ("Running" if code is None else "Failed" if code else "Succeeded"),
                       "conditions": conditions or [], "containerStatuses": [{"name": "worker", "state": state}]}}


def job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "q-a1"}, "status": status}


def observe(status: dict[str, Any] | None = None, **kwargs: Any) -> Observed:
    default = {"phase": "Pending", "attempt": 1, "attempts": [{"attempt": 1, "job": "q-a1", "startTime": T0}]}
    return Observed(name="q", status=default if status is None else status,
                    limits=LIMITS, now=T1, **kwargs)


def test_first_look_creates_attempt_one() -> None:
    decision = decide(observe(status={}))
    assert decision.create_attempt == 1
    assert decision.status["phase"] == "Pending" and decision.status["reason"] == "Creating"
    assert decision.status["attempts"] == [{"attempt": 1, "job": "q-a1", "startTime": T1}]
    assert decision.status["readySummary"] == "0/2"


def test_each_observed_state_has_one_function_named_for_it() -> None:
    assert set(DECIDE) == set(State)
    assert {state.value: function.__name__ for state, function in DECIDE.items()} == \
        {state.value: state.value for state in State}


def test_observed_state_names_what_was_seen() -> None:
    created = [{"attempt": 1, "job": "q-a1", "startTime": T0, "jobCreated": True}]
    running = {"phase": "Running", "attempt": 1, "attempts": [{**created[0], "readyTime": T0}]}
    seen = {
        State.FINISHED: observe(status={"phase": "Succeeded", "attempt": 1}),
        State.JOB_VANISHED: observe(status={"phase": "Pending", "attempt": 1, "attempts": created}),
        State.VOLUME_REFUSED: observe(volume_error="claim data is ReadWriteOnce"),
        State.RUNTIME_CLASS_MISSING: observe(missing_runtime_class="ascend"),
        State.NO_JOB: observe(status={}),
        State.JOB_COMPLETE: observe(job=job(conditions=[cond("Complete")])),
        State.JOB_FAILED: observe(job=job(conditions=[cond("FailureTarget", "PodFailurePolicy")])),
        State.JOB_SUSPENDED: observe(job=job(conditions=[cond("Suspended")])),
        State.RUNNING: observe(status=running, job=job(active=2, ready=1)),  # it ran; ranks finish one by one
        State.STARTING: observe(job=job(active=2, ready=1)),
    }
    assert {state: observed_state(observed) for state, observed in seen.items()} == {state: state for state in seen}
    assert set(seen) == set(State)


def test_missing_runtime_class_creates_nothing() -> None:
    decision = decide(observe(status={}, missing_runtime_class="ascend"))
    assert decision.create_attempt is None and decision.status["reason"] == "RuntimeClassNotFound"


def test_running_needs_every_rank() -> None:
    recent = "2025-01-01T00:59:00Z"  # within startupTimeoutSeconds of now (T1)
    half = decide(observe(job=job(active=2, ready=1, startTime=recent)))
    assert half.status["phase"] == "Pending" and half.status["readySummary"] == "1/2"
    full = decide(observe(job=job(active=2, ready=2, startTime=recent)))
    assert full.status["phase"] == "Running" and full.status["attempts"][0]["readyTime"] == T1
    assert by_type(full.status)["Running"]["status"] == "True"
    assert full.events == [("Normal", "Running", "2 of 2 rank(s) running")]


def test_ranks_finishing_one_by_one_stay_running() -> None:
    status = {"phase": "Running", "reason": "Running", "attempt": 1,
              "attempts": [{"attempt": 1, "job": "q-a1", "startTime": T0, "readyTime": T0}]}
    assert decide(observe(status=status, job=job(active=1, ready=1, succeeded=1))).status["phase"] == "Running"


def test_user_error_fails_at_once_with_the_workers_message() -> None:
    failed = job(conditions=[cond("Failed", "PodFailurePolicy", "Container worker for pod ml/q-a1-1-x failed with "
                                                                 "exit code 3 matching FailJob rule at index 0")])
    decision = decide(observe(job=failed, pods=[pod(0, 143, "terminated"), pod(1, 3, "corrupt header")]))
    assert decision.status["phase"] == "Failed" and decision.status["reason"] == "UserError"
    assert decision.status["message"] == "rank 1 (pod q-a1-1-x) exited with code 3: corrupt header"
    assert decision.create_attempt is None


def test_failure_restarts_once_the_old_pods_stopped() -> None:
    target = job(active=1, conditions=[cond("FailureTarget", "PodFailurePolicy", "Container worker for pod "
                                            "ml/q-a1-1-x failed with exit code 1 matching FailJob rule at index 2")])
    waiting = decide(observe(job=target, pods=[pod(0), pod(1, 1, "lost peer")]))
    assert waiting.create_attempt is None and waiting.status["reason"] == "Restarting"
    final = job(conditions=[cond("FailureTarget", "PodFailurePolicy", "... rule at index 2"),
                            cond("Failed", "PodFailurePolicy", "... rule at index 2")])
    decision = decide(observe(job=final, pods=[pod(0, 143, "terminated"), pod(1, 1, "lost peer")]))
    assert decision.create_attempt == 2
    status = decision.status
    assert status["attempt"] == 2 and status["job"] == "q-a2" and status["restartsCountTowardsMax"] == 1
    assert status["attempts"][0]["outcome"] == "Failed" and status["attempts"][1]["attempt"] == 2
    assert decision.events and decision.events[0][1] == "Restarting"


def test_restarts_exhausted_and_disruptions_counted_apart() -> None:
    failed = job(conditions=[cond("Failed", "PodFailurePolicy", "... rule at index 2")])
    spent = {"phase": "Pending", "attempt": 3, "restartsCountTowardsMax": 2, "disruptions": 0,
             "attempts": [{"attempt": 3, "job": "q-a3", "startTime": T0}]}
    decision = decide(observe(status=spent, job=failed, pods=[pod(0, 1, "boom")]))
    assert decision.status["reason"] == "RestartsExhausted" and "maxRestarts 2" in decision.status["message"]
    evicted = job(conditions=[cond("Failed", "PodFailurePolicy", "Pod ml/q-a3-0-x has condition DisruptionTarget "
                                                                 "matching FailJob rule at index 1")])
    restart = decide(observe(status=spent, job=evicted, pods=[pod(0, 143)]))
    assert restart.create_attempt == 4 and restart.status["disruptions"] == 1
    assert restart.status["restartsCountTowardsMax"] == 2  # a disruption is not counted in maxRestarts
    again = {**spent, "disruptions": 1}
    assert decide(observe(status=again, job=evicted, pods=[pod(0, 143)])).status["reason"] == "DisruptionsExhausted"


def test_deadline_exceeded_is_final() -> None:
    failed = job(conditions=[cond("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
    decision = decide(observe(job=failed, pods=[]))
    assert decision.status["reason"] == "DeadlineExceeded" and decision.create_attempt is None


def test_classification_without_a_policy_message_reads_the_pods() -> None:
    plain = job(conditions=[cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")])
    assert classify_failure(plain, [pod(0, 2, "bad flag")]).kind == "UserError"
    disrupted = pod(0, 143, conditions=[cond("DisruptionTarget", "PreemptionByScheduler")])
    assert classify_failure(plain, [disrupted]).kind == "Disruption"
    assert classify_failure(plain, [pod(0, 1, "segfault")]).kind == "Failure"


def test_startup_timeout_fails_and_stops_the_job() -> None:
    decision = decide(observe(job=job(active=2, ready=1, startTime="2024-12-31T23:00:00Z"), pods=[
        pod(0), pod(1, phase="Pending", conditions=[cond("PodScheduled", "Unschedulable", "Insufficient npu",
                                                         status="False")])]))
    assert decision.status["phase"] == "Failed" and decision.status["reason"] == "StartupTimeout"
    assert "Insufficient npu" in decision.status["message"] and decision.delete_job == "q-a1"


def test_pending_reason_priority() -> None:
    unschedulable = pod(1, phase="Pending", conditions=[cond("PodScheduled", "Unschedulable", "no npu",
                                                             status="False")])
    events = [{"reason": "FailedCreate", "message": "forbidden: exceeded quota"}]
    assert pending_reason(observe(job=job(), pods=[unschedulable], job_events=events))[0] == "FailedCreate"
    assert pending_reason(observe(job=job(), pods=[unschedulable])) == ("Unschedulable", "rank 1 (pod q-a1-1-x): no npu")
    assert pending_reason(observe(job=job(ready=0), pods=[])) == ("Starting", "0 of 2 rank(s) running")


def test_finished_quantjob_only_mirrors_progress() -> None:
    done = {"phase": "Succeeded", "reason": "Completed", "attempt": 1, "attempts": [{"attempt": 1, "job": "q-a1"}]}
    decision = decide(observe(status=done, job=None, progress={"attempt": 1, "layersDone": 4, "layersTotal": 4}))
    assert set(decision.status) == {"progress", "attempts"} and decision.create_attempt is None


def test_set_condition_moves_transition_time_only_on_flip() -> None:
    first = set_condition([], "Running", True, "AllRanksRunning", "1 running", T0)
    same = set_condition(first, "Running", True, "AllRanksRunning", "2 running", T1)
    assert same[0]["lastTransitionTime"] == T0 and same[0]["message"] == "2 running"
    flipped = set_condition(same, "Running", False, "NotAllRanksRunning", "", T1)
    assert flipped[0]["lastTransitionTime"] == T1 and flipped[0]["status"] == "False"


def test_invalid_status_lists_every_error_with_its_path() -> None:
    problems = [Problem("spec.devices.count", "must be at least 1"), Problem("spec.x", "careful", "warning")]
    status = invalid_status(problems, {}, T0)
    assert status["phase"] == "Failed" and status["reason"] == "Invalid"
    assert by_type(status)["Failed"]["message"] == "spec.devices.count: must be at least 1"
    assert status["warnings"] == ["spec.x: warning: careful"]


def test_pod_failure_message_prefers_the_named_pod() -> None:
    pods = [pod(0, 1, "lost peer"), pod(1, 137, "OOMKilled")]
    assert pod_failure_message(pods) == "rank 0 (pod q-a1-0-x) exited with code 1: lost peer"
    assert pod_failure_message(pods, prefer="q-a1-1-x") == "rank 1 (pod q-a1-1-x) exited with code 137: OOMKilled"
    assert pod_failure_message([pod(0)]) is None


def test_changed() -> None:
    assert not changed({"phase": "Running"}, {"phase": "Running", "runner": "x"})
    assert changed({"phase": "Failed"}, {"phase": "Running"})


# --- issue 26 -----------------------------------------------------------------------------------

def terminating(p: dict[str, Any], since: str, node: str = "node-7") -> dict[str, Any]:
    """A pod marked for deletion whose kubelet has not confirmed (its node unreachable)."""
    p["metadata"]["deletionTimestamp"] = since
    p["spec"] = {"nodeName": node}
    return p


def test_a_disrupted_rank_makes_the_attempt_a_disruption_whoever_the_job_matched() -> None:
    """26.6: rank 1 is drained; rank 0 loses its peer and exits 1 first, matching the failure rule."""
    matched_peer = job(conditions=[cond("Failed", "PodFailurePolicy", "Container worker for pod ml/q-a1-0-x failed "
                                                                      "with exit code 1 matching FailJob rule at index 2")])
    drained = pod(1, 143, conditions=[cond("DisruptionTarget", "EvictionByEvictionAPI", "node drain")])
    failure = classify_failure(matched_peer, [pod(0, 1, "lost peer"), drained])
    assert failure.kind == "Disruption" and "rank 1" in failure.message and "EvictionByEvictionAPI" in failure.message
    decision = decide(observe(job=matched_peer, pods=[pod(0, 1, "lost peer"), drained]))
    assert decision.create_attempt == 2
    assert decision.status["disruptions"] == 1 and decision.status["restartsCountTowardsMax"] == 0


def test_a_rank_stuck_terminating_holds_the_next_attempt_until_the_bound() -> None:
    """26.6: the Job has only FailureTarget while a pod on an unreachable node never ends."""
    target = job(active=1, conditions=[cond("FailureTarget", "PodFailurePolicy", "... rule at index 2")])
    stuck = terminating(pod(1), since="2025-01-01T00:55:00Z")  # 5 minutes before now (T1)
    waiting = decide(observe(job=target, pods=[pod(0, 1, "lost peer"), stuck]))
    assert waiting.create_attempt is None and "waiting for its pods" in waiting.status["message"]
    long_ago = terminating(pod(1), since="2025-01-01T00:40:00Z")  # 20 minutes: past the bound
    decision = decide(observe(job=target, pods=[pod(0, 1, "lost peer"), long_ago]))
    assert decision.create_attempt == 2 and decision.status["job"] == "q-a2"
    outcome = decision.status["attempts"][0]["message"]
    assert "abandoned after 600s" in outcome and "rank 1 (pod q-a1-1-x) on node node-7" in outcome
    assert "abandoned" in decision.events[0][2]


def test_a_vanished_job_is_never_recreated_under_its_name() -> None:
    """26.4a: someone deleted q-a1 while its pods still terminate: wait, then attempt 2 (a new name)."""
    running = {"phase": "Running", "reason": "Running", "attempt": 1,
               "attempts": [{"attempt": 1, "job": "q-a1", "startTime": T0, "readyTime": T0, "jobCreated": True}]}
    recent = "2025-01-01T00:59:30Z"
    waiting = decide(observe(status=running, job=None, pods=[terminating(pod(0), recent), terminating(pod(1), recent)]))
    assert waiting.create_attempt is None and waiting.status["job"] == "q-a1"
    assert "Job q-a1 was deleted" in waiting.status["message"]
    gone = decide(observe(status={**running, "attempts": waiting.status["attempts"]}, job=None, pods=[]))
    assert gone.create_attempt == 2 and gone.status["job"] == "q-a2"
    assert gone.status["attempts"][0]["outcome"] == "Failed" and gone.status["restartsCountTowardsMax"] == 1


def test_status_attempts_keep_the_latest_ten_and_count_the_rest() -> None:
    """26.9: maxDisruptions may be large; the status object must not grow without bound."""
    many = [{"attempt": n, "job": f"q-a{n}", "outcome": "Disrupted"} for n in range(1, 11)]
    many[-1] = {"attempt": 10, "job": "q-a10", "startTime": T0}
    status = {"phase": "Pending", "attempt": 10, "disruptions": 0, "attempts": many}
    limits = Limits(world_size=2, max_restarts=2, max_disruptions=50, startup_timeout_s=600, active_deadline_s=3600)
    evicted = job(conditions=[cond("Failed", "PodFailurePolicy", "Pod ml/q-a10-0-x has condition DisruptionTarget "
                                                                  "matching FailJob rule at index 1")])
    decision = decide(Observed(name="q", status=status, limits=limits, now=T1, job=evicted, pods=[pod(0, 143)]))
    assert decision.create_attempt == 11 and decision.status["attempt"] == 11
    assert [a["attempt"] for a in decision.status["attempts"]] == list(range(2, 12))
    assert decision.status["attemptsOmitted"] == 1


def event(reason: str, message: str, at: str, name: str = "q-a1-1-x", kind: str = "Pod",
          uid: str | None = None) -> dict[str, Any]:
    involved = {"kind": kind, "name": name, **({"uid": uid} if uid else {})}
    return {"reason": reason, "message": message, "lastTimestamp": at, "involvedObject": involved}


def test_pending_reasons_ignore_events_older_than_the_attempt_or_answered_since() -> None:
    """26.5: events live about an hour; an earlier attempt's or object's, or one the pod's state
    answered, is not today's reason."""
    started = "2025-01-01T00:50:00Z"
    status = {"phase": "Pending", "attempt": 1, "attempts": [{"attempt": 1, "job": "q-a1", "startTime": started}]}
    before, after = "2025-01-01T00:10:00Z", "2025-01-01T00:55:00Z"
    this_job = {"metadata": {"name": "q-a1", "uid": "job-2"}, "status": {"active": 1}}
    old_quota = event("FailedCreate", "exceeded quota: npu", before, "q-a1", "Job")
    other_object = event("FailedCreate", "exceeded quota: npu", after, "q-a1", "Job", uid="job-1")
    scheduled = pod(1, phase="Pending")
    scheduled["spec"] = {"nodeName": "node-3"}
    stale_scheduling = event("FailedScheduling", "0/3 nodes are available", after)
    assert pending_reason(observe(status=status, job=this_job, pods=[pod(0), scheduled],
                                  job_events=[old_quota, other_object], pod_events=[stale_scheduling])) == \
        ("Starting", "1 of 2 rank(s) running")
    fresh = event("FailedCreate", "exceeded quota: npu", after, "q-a1", "Job", uid="job-2")
    assert pending_reason(observe(status=status, job=this_job, pods=[pod(0)], job_events=[fresh]))[0] == "FailedCreate"
    every_pod = pending_reason(observe(status=status, job=this_job, pods=[pod(0), scheduled], job_events=[fresh]))
    assert every_pod[0] == "Starting"  # answered: the Job made every pod since
    unscheduled = pod(1, phase="Pending")
    assert pending_reason(observe(status=status, job=this_job, pods=[pod(0), unscheduled],
                                  pod_events=[stale_scheduling]))[0] == "FailedScheduling"


def test_startup_timeout_names_the_current_cause_not_an_old_event() -> None:
    status = {"phase": "Pending", "attempt": 1,
              "attempts": [{"attempt": 1, "job": "q-a1", "startTime": "2025-01-01T00:00:00Z"}]}
    pulling = pod(1, phase="Pending")
    pulling["spec"] = {"nodeName": "node-3"}
    pulling["status"]["containerStatuses"] = [{"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    decision = decide(observe(status=status, job=job(active=2, ready=1, startTime="2024-12-31T23:00:00Z"),
                              pods=[pod(0), pulling],
                              pod_events=[event("FailedScheduling", "Insufficient npu", "2025-01-01T00:01:00Z")]))
    assert decision.status["reason"] == "StartupTimeout"
    assert "last reason: 1 of 2 rank(s) running" in decision.status["message"]
    assert "Insufficient npu" not in decision.status["message"]  # scheduled since: not the cause


def test_progress_fields_are_checked_before_they_reach_the_status() -> None:
    """26.9: a NaN or a wrong type from the worker's ConfigMap is dropped, never copied (NaN is not
    JSON: every later status patch would be refused)."""
    hostile = {"attempt": 1, "layersDone": "3", "layersTotal": 28, "currentLayer": True,
               "lastLayerError": float("nan"), "resumedFrom": -4, "secondsPerLayer": float("inf")}
    status = decide(observe(progress=hostile)).status
    assert status["progress"] == {"layersDone": 0, "layersTotal": 28, "summary": "0/28", "attempt": 1}
    assert "resumedFromLayer" not in status["attempts"][0]
    assert decide(observe(progress={"layersTotal": "28", "layersDone": 3})).status.get("progress") is None
    import json
    json.dumps(status, allow_nan=False)  # what the API server would accept


def test_eta_from_the_current_attempts_pace() -> None:
    """ETA = the current attempt's seconds per layer (the worker excludes layers it resumed past)
    times the layers left; a report from an older attempt gives none."""
    report = {"attempt": 1, "layersDone": 10, "layersTotal": 28, "resumedFrom": 6, "secondsPerLayer": 250.0}
    progress = decide(observe(progress=report)).status["progress"]
    assert progress["etaSeconds"] == 18 * 250 and progress["eta"] == "1h15m" and progress["secondsPerLayer"] == 250.0
    stale = decide(observe(status={"phase": "Pending", "attempt": 2, "attempts": [
        {"attempt": 2, "job": "q-a2", "startTime": T0}]}, progress=report)).status["progress"]
    assert "eta" not in stale
