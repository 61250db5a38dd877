"""The operator (kopf, the reconciler) against the kmock API emulator, over HTTP (nothing patched).

kmock has no Job controller: the tests play it (and the kubelet) by writing Job and Pod objects and
statuses themselves, the way Kubernetes does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kmock
import kubernetes
import pytest
import yaml
from emulator import (
    NAMESPACE,
    QUANTJOBS,
    VOLCANO_PODGROUPS,
    eventually,
    quantjob_manifest,
    stored,
)

from quantjob.api.resource import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

NAME = "qwen2-w8a8"
JOBS = "batch/v1/jobs"


def client(cluster: Any) -> kubernetes.client.ApiClient:
    return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=str(cluster.url)))


async def create_quantjob(cluster: Any, body: dict[str, Any]) -> None:
    api = kubernetes.client.CustomObjectsApi(client(cluster))
    await asyncio.to_thread(api.create_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, body)


def url(cluster: Any, resource: str, name: str | None = None, namespace: str | None = NAMESPACE) -> str:
    group_version, _, plural = resource.rpartition("/")
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}" + (f"/{name}" if name else "")
    return f"{str(cluster.url).rstrip('/')}{path}"


async def http(method: str, target: str, body: Any = None) -> None:
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
    async with aiohttp.ClientSession() as session, session.request(method, target, json=body,
                                                                    headers=headers) as response:
        assert response.status < 300, await response.text()


async def patch_status(cluster: Any, resource: str, name: str, status: dict[str, Any]) -> None:
    """Play a controller: merge-patch an object's ``/status`` over HTTP."""
    await http("PATCH", url(cluster, resource, name) + "/status", {"status": status})


def put(cluster: Any, resource: str, obj: dict[str, Any], namespace: str | None = NAMESPACE) -> None:
    cluster.objects[kmock.resource(resource), namespace, obj["metadata"]["name"]] = obj


def quantjob_status(cluster: Any, name: str = NAME) -> dict[str, Any]:
    return (stored(cluster, QUANTJOBS, name) or {}).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


async def status_where(cluster: Any, check: Any, timeout: float = 15.0) -> dict[str, Any]:
    return dict(await eventually(lambda: check(quantjob_status(cluster)) and quantjob_status(cluster), timeout))


def pod(job: str, index: int, *, attempt: int = 1, phase: str = "Running", exit_code: int | None = None,
        message: str = "", conditions: list[dict[str, Any]] | None = None,
        waiting: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pod of Job ``job`` as the Job controller labels it and the kubelet reports it."""
    name = f"{job}-{index}-x{index}"
    state: dict[str, Any] = {"running": {}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "message": message, "reason": "Error" if exit_code else
                                "Completed"}}
    elif waiting is not None:
        state = {"waiting": waiting}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"pod-{name}",
                         "labels": {"quantjob.io/name": NAME, "quantjob.io/attempt": str(attempt),
                                    "batch.kubernetes.io/job-name": job,
                                    "batch.kubernetes.io/job-completion-index": str(index)}},
            "status": {"phase": phase, "conditions": conditions or [],
                       "containerStatuses": [{"name": "worker", "state": state}]}}


def failed_job(rule: int, pod_name: str, code: int | None = None, final: bool = True) -> dict[str, Any]:
    """Job status once a FailJob rule matched (1.31+: FailureTarget, then Failed after the pods ended)."""
    what = (f"Container worker for pod {NAMESPACE}/{pod_name} failed with exit code {code}" if code is not None
            else f"Pod {NAMESPACE}/{pod_name} has condition DisruptionTarget")
    message = f"{what} matching FailJob rule at index {rule}"
    conditions = [{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy", "message": message}]
    if final:
        conditions.append({"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": message,
                           "lastTransitionTime": "2025-01-01T02:00:00Z"})
    return {"active": 0, "failed": 1, "conditions": conditions}


def posted_events(cluster: Any) -> list[tuple[str, str]]:
    return [(r.data.get("type"), r.data.get("reason")) for r in cluster
            if r.method == "POST" and r.resource == kmock.resource("v1/events")
            and (r.data.get("involvedObject") or {}).get("kind") == "QuantJob"]


async def test_create_makes_children_and_records_status(cluster: Any, start_operator: Any) -> None:
    body = quantjob_manifest(count=2)
    body["metadata"]["labels"] = {"team": "a"}
    async with start_operator():
        await create_quantjob(cluster, body)
        job = await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        status = await status_where(cluster, lambda s: s.get("runner"))

    assert status["runner"] == "dp_layer_wise" and status["worldSize"] == 2 and status["phase"] == "Pending"
    assert status["job"] == "qwen2-w8a8-a1" and status["attempt"] == 1 and status["readySummary"] == "0/2"
    assert status["attempts"][0]["job"] == "qwen2-w8a8-a1"
    assert condition(status, "Valid")["status"] == "True"

    config_map = stored(cluster, "v1/configmaps", "qwen2-w8a8-config")
    service = stored(cluster, "v1/services", NAME)
    assert config_map and service
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["spec"]["runner"] == "dp_layer_wise"
    assert config["spec"]["save"][0]["type"] == "distributed_ascendv1_saver"

    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod_spec = spec["template"]["spec"]
    assert pod_spec["subdomain"] == NAME and pod_spec["serviceAccountName"] == "qwen2-w8a8-worker"
    for resource, name in [("v1/serviceaccounts", "qwen2-w8a8-worker"),
                           ("rbac.authorization.k8s.io/v1/roles", "qwen2-w8a8-worker"),
                           ("rbac.authorization.k8s.io/v1/rolebindings", "qwen2-w8a8-worker"),
                           ("v1/configmaps", "qwen2-w8a8-config"), ("v1/configmaps", "qwen2-w8a8-progress"),
                           ("v1/services", NAME), (JOBS, "qwen2-w8a8-a1")]:
        child = stored(cluster, resource, name)
        assert child is not None, resource
        assert child["metadata"]["ownerReferences"] == [{"apiVersion": "quantjob.io/v1alpha1", "kind": "QuantJob",
                                                         "name": NAME, "uid": "uid-1", "controller": True,
                                                         "blockOwnerDeletion": True}], resource
        assert "team" not in child["metadata"]["labels"], resource  # our labels only
    # nothing wrote onto the QuantJob but its status (no kopf annotations, no finalizer)
    assert not [r for r in cluster if r.method == "PATCH" and r.resource == kmock.resource(QUANTJOBS)
                and r.subresource != "status"]


async def test_running_only_when_every_rank_runs_then_succeeded(cluster: Any, start_operator: Any) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"active": 2, "ready": 1,
                                                            "startTime": "2099-01-01T00:00:00Z"})
        starting = await status_where(cluster, lambda s: s.get("readySummary") == "1/2")
        assert starting["phase"] == "Pending" and starting["reason"] == "Starting"
        assert condition(starting, "Running")["status"] == "False"

        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"ready": 2})
        running = await status_where(cluster, lambda s: s.get("phase") == "Running")
        assert running["readySummary"] == "2/2" and running["startTime"] == "2099-01-01T00:00:00Z"
        assert condition(running, "Running")["status"] == "True"
        assert running["attempts"][0]["readyTime"]

        # rank 0's progress goes to its ConfigMap; the operator mirrors it
        await http("PATCH", url(cluster, "v1/configmaps", "qwen2-w8a8-progress"), {"data": {"progress.json": (
            '{"attempt": 1, "layersDone": 3, "layersTotal": 28, "currentLayer": 3, "resumedFrom": 0}')}})
        mirrored = await status_where(cluster, lambda s: (s.get("progress") or {}).get("layersDone") == 3)
        assert mirrored["progress"] == {"layersDone": 3, "layersTotal": 28, "summary": "3/28", "currentLayer": 3,
                                        "attempt": 1}
        assert mirrored["attempts"][0]["resumedFromLayer"] == 0

        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {
            "active": 0, "ready": 0, "succeeded": 2, "completionTime": "2099-01-01T01:00:00Z",
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
                           {"type": "Complete", "status": "True", "reason": "CompletionsReached"}]})
        done = await status_where(cluster, lambda s: s.get("phase") == "Succeeded")
        await eventually(lambda: ("Normal", "Completed") in posted_events(cluster))
    assert done["completionTime"] == "2099-01-01T01:00:00Z" and done["attempts"][0]["outcome"] == "Succeeded"
    assert condition(done, "Complete")["status"] == "True" and condition(done, "Running")["status"] == "False"
    assert condition(done, "Valid")["status"] == "True"
    assert ("Normal", "Running") in posted_events(cluster)  # phase changes are Events on the QuantJob


async def test_suspended_job_is_pending_with_reason(cluster: Any, start_operator: Any) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2, queueName="team-a"))
        job = await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"conditions": [
            {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "waiting in team-a"}]})
        status = await status_where(cluster, lambda s: s.get("reason") == "Suspended")
    assert status["phase"] == "Pending" and status["message"] == "waiting in team-a"
    assert condition(status, "Suspended")["status"] == "True"


async def test_unschedulable_rank_is_pending_with_the_schedulers_reason(cluster: Any, start_operator: Any) -> None:
    why = "0/3 nodes are available: 3 Insufficient huawei.com/Ascend910."
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 0))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 1, phase="Pending", conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}]))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"active": 2, "ready": 1, "startTime": "2099-01-01T00:00:00Z"})
        status = await status_where(cluster, lambda s: s.get("reason") == "Unschedulable")
        await eventually(lambda: ("Warning", "Unschedulable") in posted_events(cluster))
    assert status["phase"] == "Pending" and status["readySummary"] == "1/2"
    assert status["message"] == f"rank 1 (pod qwen2-w8a8-a1-1-x1): {why}"


@pytest.mark.parametrize("objects, reason, text", [
    ([("v1/events", {"metadata": {"name": "e1", "namespace": NAMESPACE}, "reason": "FailedCreate", "type": "Warning",
                     "involvedObject": {"kind": "Job", "name": "qwen2-w8a8-a1", "namespace": NAMESPACE},
                     "message": 'Error creating: pods "qwen2-w8a8-a1-0-x" is forbidden: exceeded quota: npu'})],
     "FailedCreate", "exceeded quota"),
    ([("v1/pods", pod("qwen2-w8a8-a1", 0, phase="Pending", waiting={
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.local/worker:9"'}))],
     "ImagePullBackOff", "registry.local/worker:9"),
    ([("v1/pods", pod("qwen2-w8a8-a1", 0, phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]))],
     "PersistentVolumeClaimPending", "unbound immediate PersistentVolumeClaims"),
])
async def test_why_nothing_runs_reaches_the_status(cluster: Any, start_operator: Any,
                                                   objects: list[tuple[str, dict[str, Any]]], reason: str,
                                                   text: str) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        for resource, obj in objects:
            put(cluster, resource, obj)
        status = await status_where(cluster, lambda s: s.get("reason") == reason)
    assert status["phase"] == "Pending" and text in status["message"]


async def test_missing_runtime_class_is_pending_until_it_exists(cluster: Any, start_operator: Any) -> None:
    async with start_operator(npu_runtime_class="ascend"):
        await create_quantjob(cluster, quantjob_manifest(count=2))
        status = await status_where(cluster, lambda s: s.get("reason") == "RuntimeClassNotFound")
        assert status["phase"] == "Pending" and "'ascend'" in status["message"]
        assert "QUANTJOB_NPU_RUNTIME_CLASS" in status["message"]
        await asyncio.sleep(1.0)
        assert stored(cluster, JOBS, "qwen2-w8a8-a1") is None  # no Job whose every pod would be refused
        put(cluster, "node.k8s.io/v1/runtimeclasses", {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                                                       "metadata": {"name": "ascend"}, "handler": "ascend"},
            namespace=None)
        job = await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
    assert job["spec"]["template"]["spec"]["runtimeClassName"] == "ascend"


async def test_user_error_fails_after_one_attempt_with_the_workers_message(cluster: Any,
                                                                         start_operator: Any) -> None:
    corrupt = "model.safetensors: header is corrupt; re-download the checkpoint"
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 0, phase="Failed", exit_code=143, message="terminated"))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 1, phase="Failed", exit_code=3, message=corrupt))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", failed_job(0, "qwen2-w8a8-a1-1-x1", 3))
        status = await status_where(cluster, lambda s: s.get("phase") == "Failed")
        await asyncio.sleep(1.0)
    assert status["reason"] == "UserError" and status["attempt"] == 1 and status["restarts"] == 0
    assert status["message"] == f"rank 1 (pod qwen2-w8a8-a1-1-x1) exited with code 3: {corrupt}"
    assert condition(status, "Failed")["message"] == status["message"]
    assert stored(cluster, JOBS, "qwen2-w8a8-a2") is None  # never retried
    assert ("Warning", "UserError") in posted_events(cluster)


async def test_failures_restart_the_whole_group_until_max_restarts(cluster: Any, start_operator: Any) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2, maxRestarts=1))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        # rank 1 is lost; the Job controller has decided (FailureTarget) but rank 0 still runs
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 0))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 1, phase="Failed", exit_code=137, message="OOMKilled"))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", failed_job(2, "qwen2-w8a8-a1-1-x1", 137, final=False))
        waiting = await status_where(cluster, lambda s: s.get("reason") == "Restarting")
        assert "waiting for its pods to stop" in waiting["message"]
        await asyncio.sleep(1.0)
        assert stored(cluster, JOBS, "qwen2-w8a8-a2") is None  # no new group while an old rank runs

        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 0, phase="Failed", exit_code=143, message="terminated"))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", failed_job(2, "qwen2-w8a8-a1-1-x1", 137))
        second = await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a2"))
        restarted = await status_where(cluster, lambda s: s.get("attempt") == 2)
        env = {e["name"]: e.get("value") for e in second["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MASTER_ADDR"] == "qwen2-w8a8-a2-0.qwen2-w8a8" and env["QUANTJOB_ATTEMPT"] == "2"
        assert restarted["restarts"] == restarted["restartsCountTowardsMax"] == 1 and restarted["disruptions"] == 0
        assert [a["outcome"] for a in restarted["attempts"][:1]] == ["Failed"]
        assert "exited with code 137" in restarted["attempts"][0]["message"]

        put(cluster, "v1/pods", pod("qwen2-w8a8-a2", 0, attempt=2, phase="Failed", exit_code=1, message="lost peer"))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a2", failed_job(2, "qwen2-w8a8-a2-0-x0", 1))
        status = await status_where(cluster, lambda s: s.get("phase") == "Failed")
        await asyncio.sleep(1.0)
    assert status["reason"] == "RestartsExhausted"
    assert "after 1 restart(s) (maxRestarts 1)" in status["message"] and "lost peer" in status["message"]
    assert stored(cluster, JOBS, "qwen2-w8a8-a3") is None
    assert ("Warning", "Restarting") in posted_events(cluster)


async def test_disruptions_restart_without_counting_against_max_restarts(cluster: Any,
                                                                        start_operator: Any) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2, maxRestarts=0))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 0, phase="Failed", exit_code=143, conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", failed_job(1, "qwen2-w8a8-a1-0-x0"))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a2"))
        status = await status_where(cluster, lambda s: s.get("attempt") == 2)
    assert status["disruptions"] == 1 and status["restartsCountTowardsMax"] == 0 and status["phase"] == "Pending"
    assert status["attempts"][0]["outcome"] == "Disrupted"


async def test_deleted_children_are_recreated(cluster: Any, start_operator: Any) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, "v1/services", NAME))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        for resource, name in (("v1/services", NAME), ("v1/configmaps", "qwen2-w8a8-config"),
                               ("rbac.authorization.k8s.io/v1/roles", "qwen2-w8a8-worker")):
            await http("DELETE", url(cluster, resource, name))
            # the delete took (a resync may have recreated it already: seen under two xdist workers)
            assert any(version is None for version in cluster.objects[kmock.resource(resource), NAMESPACE, name].history)
            recreated = await eventually(lambda: stored(cluster, resource, name))  # noqa: B023
            assert recreated["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    jobs = [key for key in cluster.objects if key[0] == kmock.resource(JOBS)]
    assert len(jobs) == 1  # never a second Job for the same attempt


async def test_existing_object_of_a_childs_name_is_a_conflict_not_adopted(cluster: Any,
                                                                         start_operator: Any) -> None:
    # issue 14.3: someone else's ServiceAccount with the name the worker pods would use
    foreign = {"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "qwen2-w8a8-worker", "namespace": NAMESPACE, "uid": "someone-else"}}
    put(cluster, "v1/serviceaccounts", foreign)
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        status = await status_where(cluster, lambda s: s.get("reason") == "ChildConflict")
        await asyncio.sleep(1.0)
    assert status["phase"] == "Pending"
    assert "ServiceAccount qwen2-w8a8-worker already exists and was not created by this QuantJob" in status["message"]
    assert stored(cluster, JOBS, "qwen2-w8a8-a1") is None  # no pod runs with someone else's account
    assert stored(cluster, "v1/serviceaccounts", "qwen2-w8a8-worker") == foreign  # left as it was


async def test_job_the_api_server_rejects_fails_with_its_message(cluster: Any, start_operator: Any) -> None:
    # issue 14.9: the create is refused (a rule admission could not know, e.g. a cluster policy)
    refusal = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422,
               "message": 'Job.batch "qwen2-w8a8-a1" is invalid: spec.template.spec.containers[0].image: '
                          'Invalid value: "x": denied by policy'}
    cluster["post", kmock.resource(JOBS)] << 422 << refusal
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        status = await status_where(cluster, lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "CreateRejected"
    assert "denied by policy" in status["message"] and "HTTP 422" in status["message"]
    assert condition(status, "Failed")["status"] == "True"


async def test_group_that_never_fully_starts_fails_and_frees_its_devices(cluster: Any,
                                                                       start_operator: Any) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2, startupTimeoutSeconds=30))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 0))
        put(cluster, "v1/pods", pod("qwen2-w8a8-a1", 1, phase="Pending", conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient huawei.com/Ascend910."}]))
        await patch_status(cluster, JOBS, "qwen2-w8a8-a1", {"active": 2, "ready": 1,
                                                            "startTime": "2020-01-01T00:00:00Z"})
        status = await status_where(cluster, lambda s: s.get("phase") == "Failed")
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1") is None)  # its pods go with it
    assert status["reason"] == "StartupTimeout"
    assert "startupTimeoutSeconds (30s)" in status["message"] and "Insufficient huawei.com/Ascend910" in status["message"]


async def test_volcano_gang_gets_its_pod_group(cluster: Any, start_operator: Any) -> None:
    async with start_operator(gang_scheduling="volcano"):
        await create_quantjob(cluster, quantjob_manifest(count=4, scheduling={"queue": "npu", "gang": "volcano"}))
        group = await eventually(lambda: stored(cluster, VOLCANO_PODGROUPS, "qwen2-w8a8-a1"))
        job = await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
    assert group["spec"] == {"minMember": 4, "queue": "npu"}
    assert job["spec"]["template"]["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "qwen2-w8a8-a1"


async def test_restart_mid_reconcile_creates_no_duplicates(cluster: Any, start_operator: Any) -> None:
    from quantjob.operator.builders import build_config_map, owner_reference
    from quantjob.operator.review import review_quantjob

    body = quantjob_manifest(count=2)
    # A previous operator died after creating the ConfigMap: it is there, the rest is not.
    resolution = review_quantjob(body)
    assert resolution.job is not None
    config_map = build_config_map(resolution.job, resolution, NAMESPACE)
    config_map["metadata"]["ownerReferences"] = [owner_reference(body)]
    put(cluster, "v1/configmaps", config_map)
    put(cluster, QUANTJOBS, body)

    async with start_operator():
        await status_where(cluster, lambda s: s.get("runner"))
        await eventually(lambda: stored(cluster, JOBS, "qwen2-w8a8-a1"))
    posts_first = [(r.resource, r.data.get("metadata", {}).get("name")) for r in cluster
                   if r.method == "POST" and r.resource != kmock.resource("v1/events")]
    async with start_operator():  # a second restart: everything is there already
        await asyncio.sleep(2)
    objects = [(resource, name) for resource, name in
               (("v1/configmaps", "qwen2-w8a8-config"), ("v1/configmaps", "qwen2-w8a8-progress"),
                ("v1/services", NAME), (JOBS, "qwen2-w8a8-a1"), ("v1/serviceaccounts", "qwen2-w8a8-worker"),
                ("rbac.authorization.k8s.io/v1/roles", "qwen2-w8a8-worker"),
                ("rbac.authorization.k8s.io/v1/rolebindings", "qwen2-w8a8-worker"))]
    for resource, name in objects:
        keys = [key for key in cluster.objects if key[0] == kmock.resource(resource) and key[2] == name]
        assert len(keys) == 1, (resource, keys)
        assert len(cluster.objects[keys[0]].history) == 1, resource  # created once, never replaced
    assert stored(cluster, "v1/configmaps", "qwen2-w8a8-config") == config_map  # the survivor kept
    assert len(set(posts_first)) >= 6  # each reconcile re-posts and meets 409: nothing is duplicated


@pytest.mark.parametrize("spec, path", [
    ({"config": {"apiversion": "modelslim_v1", "spec": {"runner": "layer_wise", "process": [
        {"type": "linear_quant", "qconfig": {
            "act": {"scope": "per_tensor", "dtype": "int8", "symmetric": False, "method": "minmax"},
            "weight": {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}},
         "include": ["*"]}], "save": [{"type": "ascendv1_saver"}]}}, "quantType": None},
     "spec.config.spec.runner"),
    ({"devices": {"type": "npu", "count": 0}}, "spec.devices.count"),
    ({"env": {"QUANTJOB_API_SERVER": "http://evil.example"}}, "spec.env.QUANTJOB_API_SERVER"),
])
async def test_invalid_spec_creates_nothing(cluster: Any, start_operator: Any, spec: dict[str, Any],
                                            path: str) -> None:
    body = quantjob_manifest(count=2)
    body["spec"].update(spec)
    body["spec"] = {key: value for key, value in body["spec"].items() if value is not None}
    async with start_operator():
        await create_quantjob(cluster, body)
        status = await status_where(cluster, lambda s: s.get("phase"))
        await asyncio.sleep(0.5)
    assert status["phase"] == "Failed" and status["reason"] == "Invalid"
    failed = condition(status, "Failed")
    assert failed["reason"] == "Invalid" and path in failed["message"]
    assert condition(status, "Valid")["status"] == "False"
    for resource in ("v1/configmaps", "v1/services", JOBS, "v1/serviceaccounts"):
        assert not [key for key in cluster.objects if key[0] == kmock.resource(resource)], resource


async def test_operator_policy_holds_while_the_webhook_is_down(cluster: Any, start_operator: Any) -> None:
    # issue 14.16: the webhook's failure policy is Ignore, so the reconcile applies the same policy
    body = quantjob_manifest(count=2)
    body["spec"]["model"]["trustRemoteCode"] = True
    async with start_operator(allow_trust_remote_code=False):
        await create_quantjob(cluster, body)
        status = await status_where(cluster, lambda s: s.get("phase"))
    assert status["phase"] == "Failed" and "spec.model.trustRemoteCode" in status["message"]
    assert not [key for key in cluster.objects if key[0] == kmock.resource(JOBS)]
