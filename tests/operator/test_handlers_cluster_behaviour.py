"""Issue 26: what a real API server, quota, garbage collector and event stream do that the emulator
did not, played against the operator over HTTP (kmock, with the behaviour added in ``emulator``)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import kmock
import pytest
from emulator import (
    age_events,
    eventually,
    finish_terminating,
    live_count,
    object_count_quota,
    quantjob_manifest,
    record_event,
    start_terminating,
    stored,
)
from test_handlers_kmock import JOBS, create_quantjob, http, patch_status, pod, put, status_where, url

from quantjob.operator.status import now_iso

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


def posts(cluster: Any, resource: str) -> int:
    return sum(1 for r in cluster if r.method == "POST" and r.resource == kmock.resource(resource))


async def test_running_job_in_a_namespace_at_its_quota_stays_running(cluster: Any, start_operator: Any) -> None:
    """26.1: the quota refuses a create of an existing ConfigMap with 403 before any 409."""
    async with start_operator():
        object_count_quota(cluster, "v1/configmaps", hard=2)  # the config and progress ConfigMaps fill it
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await status_where(cluster, lambda s: s.get("reason") in ("Creating", "Starting"))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"active": 2, "ready": 2,
                                                            "startTime": "2099-01-01T00:00:00Z"})
        await status_where(cluster, lambda s: s.get("phase") == "Running")
        await asyncio.sleep(2.0)  # four resyncs, each of which used to POST every child again
        assert live_count(cluster, "v1/configmaps") == 2
        status = await status_where(cluster, lambda s: s.get("phase"))
        assert status["phase"] == "Running", status
        assert posts(cluster, "v1/configmaps") == 2 and posts(cluster, JOBS) == 1
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {
            "active": 0, "ready": 0, "succeeded": 2,
            "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}]})
        done = await status_where(cluster, lambda s: s.get("phase") in ("Succeeded", "Failed"))
    assert done["phase"] == "Succeeded", done
    assert stored(cluster, JOBS, "qwen2-w8a8-a1") is not None


async def test_deleted_attempt_job_is_replaced_by_a_new_name_after_its_pods_are_gone(
        cluster: Any, start_operator: Any) -> None:
    """26.4a: a Job deleted by hand while its pods still terminate is not recreated under its name."""
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        for index in (0, 1):
            put(cluster, "v1/pods", pod("qwen2-w8a8-a1", index))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"active": 2, "ready": 2,
                                                            "startTime": "2099-01-01T00:00:00Z"})
        await status_where(cluster, lambda s: s.get("phase") == "Running")
        await http("DELETE", url(cluster, JOBS, "qwen2-w8a8-a1"))
        old_pods = start_terminating(cluster, "qwen2-w8a8-a1", since=now_iso())
        waiting = await status_where(cluster, lambda s: "was deleted" in (s.get("message") or ""))
        await asyncio.sleep(1.5)  # three resyncs
        assert stored(cluster, JOBS, "qwen2-w8a8-a1") is None and stored(cluster, JOBS, "qwen2-w8a8-a2") is None
        assert waiting["phase"] == "Pending" and "waiting for its pods" in waiting["message"]
        finish_terminating(cluster, old_pods)
        job = await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a2"))
        status = await status_where(cluster, lambda s: s.get("attempt") == 2)
    assert stored(cluster, JOBS, "qwen2-w8a8-a1") is None
    assert {"name": "MASTER_ADDR", "value": "qwen2-w8a8-a2-0.qwen2-w8a8"} in \
        job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert status["attempts"][0]["outcome"] == "Failed" and "was deleted" in status["attempts"][0]["message"]


async def test_an_earlier_objects_events_are_not_todays_pending_reason(cluster: Any, start_operator: Any) -> None:
    """26.5: a QuantJob of the same name hit the quota half an hour ago and was recreated; its Job's
    FailedCreate event is still stored (events live an hour) but is not the new attempt's reason."""
    now = datetime.datetime.now(datetime.timezone.utc)
    record_event(cluster, {"kind": "Job", "name": "qwen2-w8a8-a1"}, "FailedCreate",
                 "Error creating: pods is forbidden: exceeded quota: npu", now - datetime.timedelta(minutes=30))
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 0))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"active": 1, "ready": 1})
        status = await status_where(cluster, lambda s: s.get("readySummary") == "1/2")
        await asyncio.sleep(1.0)
        status = await status_where(cluster, lambda s: s.get("reason"))
        assert status["reason"] == "Starting", status
        record_event(cluster, {"kind": "Job", "name": "qwen2-w8a8-a1"}, "FailedCreate",
                     "Error creating: pods is forbidden: exceeded quota: npu", datetime.datetime.now(datetime.timezone.utc))
        status = await status_where(cluster, lambda s: s.get("reason") == "FailedCreate")
    assert "exceeded quota" in status["message"]
    assert age_events(cluster, now + datetime.timedelta(minutes=45)) == 1  # the old one expires first


async def test_children_are_watched_with_server_side_label_selectors(cluster: Any, start_operator: Any) -> None:
    """26.3: only our Jobs and progress ConfigMaps come over the watch, not every one in the cluster."""
    async with start_operator():
        await eventually(lambda: [r for r in cluster if r.resource == kmock.resource("v1/configmaps")])
        await asyncio.sleep(0.5)
    selectors = {(r.resource.plural, r.params.get("labelSelector")) for r in cluster
                 if r.method == "GET" and r.resource in (kmock.resource(JOBS), kmock.resource("v1/configmaps"))
                 and r.name is None}
    assert selectors == {("jobs", "quantjob.io/name"), ("configmaps", "quantjob.io/component=progress")}, selectors


def claim(name: str, *modes: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "ml"},
            "spec": {"accessModes": list(modes)}, "status": {"phase": "Bound", "accessModes": list(modes)}}


async def test_a_read_write_once_claim_across_nodes_is_refused_naming_it(cluster: Any, start_operator: Any) -> None:
    """26.7: refused at reconcile, before any pod fails with Multi-Attach."""
    put(cluster, "v1/persistentvolumeclaims", claim("models", "ReadWriteOnce"))
    put(cluster, "v1/persistentvolumeclaims", claim("quantized", "ReadWriteMany"))
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(devices={"type": "npu", "count": 2, "perNode": 1}))
        status = await status_where(cluster, lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "VolumeAccessMode"
    assert "spec.model.pvc: claim 'models' is ReadWriteOnce" in status["message"] and "perNode 1" in status["message"]
    assert stored(cluster, JOBS, "qwen2-w8a8-a1") is None


async def test_a_read_write_once_claim_on_one_node_is_a_warning(cluster: Any, start_operator: Any) -> None:
    put(cluster, "v1/persistentvolumeclaims", claim("models", "ReadWriteOnce"))
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        status = await status_where(cluster, lambda s: s.get("warnings"))
    assert any("claim 'models' is ReadWriteOnce: all 2 ranks must run on one node" in w for w in status["warnings"])
    assert status["phase"] == "Pending"


async def test_a_missing_child_refused_by_quota_does_not_hide_the_running_attempt(cluster: Any,
                                                                                  start_operator: Any) -> None:
    """26.1: the Service is deleted while the group runs and the quota refuses its re-creation."""
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"active": 2, "ready": 2,
                                                            "startTime": "2099-01-01T00:00:00Z"})
        await status_where(cluster, lambda s: s.get("phase") == "Running")
        object_count_quota(cluster, "v1/services", hard=0)
        await http("DELETE", url(cluster, "v1/services", "qwen2-w8a8"))
        status = await status_where(cluster, lambda s: any("exceeded quota" in w for w in s.get("warnings") or []))
        assert status["phase"] == "Running", status
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {
            "active": 0, "ready": 0, "succeeded": 2,
            "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}]})
        done = await status_where(cluster, lambda s: s.get("phase") in ("Succeeded", "Failed"))
    assert done["phase"] == "Succeeded", done


async def test_a_rank_stuck_terminating_is_abandoned_after_the_bound(cluster: Any, start_operator: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """26.6: rank 1's node is unreachable: its pod never leaves Terminating and the Job stays at
    FailureTarget; past the bound (shortened here) the next attempt starts and says why."""
    from quantjob.operator import observation

    monkeypatch.setattr(observation, "TERMINATING_BOUND_S", 2)
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 0, phase="Failed", exit_code=1, message="lost peer"))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 1))
        start_terminating(cluster, "qwen2-w8a8-a1", since=now_iso(), node="node-9")
        message = ("Container worker for pod ml/qwen2-w8a8-a1-0-x0 failed with exit code 1 matching FailJob rule "
                   "at index 2")
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"active": 1, "terminating": 1, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy", "message": message}]})
        await status_where(cluster, lambda s: "waiting for its pods" in (s.get("message") or ""))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a2"), timeout=20)
        status = await status_where(cluster, lambda s: s.get("attempt") == 2)
    first = status["attempts"][0]
    assert first["outcome"] == "Failed" and "abandoned after 2s" in first["message"]
    assert "rank 1 (pod qwen2-w8a8-a1-1-x1) on node node-9 still terminating" in first["message"]
