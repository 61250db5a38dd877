"""Job status -> QuantJob phase and conditions: pure functions."""

from __future__ import annotations

from typing import Any

from quantjob.api.problems import Problem
from quantjob.operator.status import (
    changed,
    invalid_status,
    job_phase,
    mirror_job,
    pod_failure_message,
    set_condition,
)

T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z"


def cond(type_: str, reason: str = "", message: str = "", status: str = "True") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}


def by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_phase_from_job_status() -> None:
    assert job_phase({}) == "Pending"
    assert job_phase({"active": 2}) == "Running"
    assert job_phase({"active": 2, "conditions": [cond("Suspended")]}) == "Pending"
    assert job_phase({"succeeded": 2, "conditions": [cond("Complete")]}) == "Succeeded"
    assert job_phase({"succeeded": 2, "conditions": [cond("SuccessCriteriaMet")]}) == "Succeeded"  # k8s 1.31+
    assert job_phase({"active": 1, "conditions": [cond("FailureTarget")]}) == "Failed"
    assert job_phase({"conditions": [cond("Failed", status="False")], "active": 1}) == "Running"
    # started, between pods (a failed rank being replaced, last pods being counted): still Running
    assert job_phase({"startTime": "2026-01-01T00:00:00Z", "active": 0, "failed": 1}) == "Running"


def test_mirror_fills_times_and_conditions() -> None:
    running = mirror_job({"active": 2, "startTime": T0}, 2, {}, None, T1)
    assert running["phase"] == "Running" and running["startTime"] == T0 and "completionTime" not in running
    assert by_type(running)["Running"]["status"] == "True"
    done = mirror_job({"succeeded": 2, "startTime": T0, "completionTime": T1, "conditions": [cond("Complete")]},
                      2, running, None, T1)
    assert done["phase"] == "Succeeded" and done["completionTime"] == T1
    assert by_type(done)["Complete"]["status"] == "True" and by_type(done)["Running"]["status"] == "False"


def test_failed_prefers_the_pod_message() -> None:
    job = {"failed": 3, "conditions": [cond("Failed", "BackoffLimitExceeded", "backoff limit reached")]}
    failed = by_type(mirror_job(job, 2, {}, "rank 1 (pod p) exited with code 3: bad header", T1))["Failed"]
    assert failed["reason"] == "BackoffLimitExceeded" and "bad header" in failed["message"]
    assert by_type(mirror_job(job, 2, {}, None, T1))["Failed"]["message"] == "backoff limit reached"


def test_transition_time_moves_only_on_a_flip() -> None:
    first = set_condition([], "Running", True, "PodsActive", "", T0)
    same = set_condition(first, "Running", True, "PodsActive", "2 running", T1)
    assert same[0]["lastTransitionTime"] == T0
    flipped = set_condition(same, "Running", False, "NoPodsActive", "", T1)
    assert flipped[0]["lastTransitionTime"] == T1


def test_mirror_is_stable_so_repeated_events_patch_nothing() -> None:
    job = {"active": 2, "startTime": T0}
    first = mirror_job(job, 2, {}, None, T0)
    again = mirror_job(job, 2, first, None, T1)
    assert not changed(again, first)
    assert "progress" not in again  # rank 0 owns it


def test_pod_failure_message_picks_the_lowest_failed_rank() -> None:
    def pod(index: int, code: int, message: str) -> dict[str, Any]:
        return {"metadata": {"name": f"j-{index}-x", "labels": {"batch.kubernetes.io/job-completion-index": str(index)}},
                "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": code, "message": message}}}]}}
    assert pod_failure_message([pod(0, 0, "")]) is None
    message = pod_failure_message([pod(2, 1, "oom"), pod(1, 3, "bad header"), pod(0, 0, "")])
    assert message == "rank 1 (pod j-1-x) exited with code 3: bad header"


def test_invalid_status() -> None:
    status = invalid_status([Problem("spec.devices.count", "must be >= 1"),
                             Problem("spec.config.spec.runner", "falls back", "warning")], {}, T0)
    assert status["phase"] == "Failed"
    assert by_type(status)["Failed"]["reason"] == "Invalid"
    assert "spec.devices.count: must be >= 1" in by_type(status)["Failed"]["message"]
    assert status["warnings"] == ["spec.config.spec.runner: warning: falls back"]
