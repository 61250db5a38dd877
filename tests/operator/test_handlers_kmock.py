"""kopf handlers against the kmock API emulator, over HTTP (nothing patched)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kubernetes
import pytest
import yaml
from emulator import NAMESPACE, QUANTJOBS, eventually, quantjob_manifest, stored

from quantjob.api.resource import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


def client(cluster: Any) -> kubernetes.client.ApiClient:
    return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=str(cluster.url)))


async def create_quantjob(cluster: Any, body: dict[str, Any]) -> None:
    api = kubernetes.client.CustomObjectsApi(client(cluster))
    await asyncio.to_thread(api.create_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, body)


async def patch_status(cluster: Any, resource: str, name: str, status: dict[str, Any]) -> None:
    """Play a controller: merge-patch an object's ``/status`` over HTTP."""
    group_version, _, plural = resource.rpartition("/")
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{prefix}/namespaces/{NAMESPACE}/{plural}/{name}/status"
    url = f"{str(cluster.url).rstrip('/')}{path}"
    async with aiohttp.ClientSession() as session, session.patch(
            url, json={"status": status}, headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status == 200, await response.text()


def quantjob_status(cluster: Any, name: str = "qwen2-w8a8") -> dict[str, Any]:
    return (stored(cluster, QUANTJOBS, name) or {}).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


async def test_create_makes_children_and_records_status(cluster: Any, start_operator: Any) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        job = await eventually(lambda: stored(cluster, "batch/v1/jobs", "qwen2-w8a8"))
        status = await eventually(lambda: quantjob_status(cluster).get("runner") and quantjob_status(cluster))

    assert status["runner"] == "dp_layer_wise" and status["worldSize"] == 2 and status["phase"] == "Pending"
    assert status["job"] == "qwen2-w8a8"
    assert condition(status, "Valid")["status"] == "True"

    config_map = stored(cluster, "v1/configmaps", "qwen2-w8a8-config")
    service = stored(cluster, "v1/services", "qwen2-w8a8")
    assert config_map and service
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["spec"]["runner"] == "dp_layer_wise"
    assert config["spec"]["save"][0]["type"] == "distributed_ascendv1_saver"
    assert service["spec"]["clusterIP"] == "None"

    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "qwen2-w8a8" and pod["serviceAccountName"] == "qwen2-w8a8-worker"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "qwen2-w8a8-0.qwen2-w8a8" and env["WORLD_SIZE"] == "2"
    assert pod["containers"][0]["resources"]["limits"]["huawei.com/Ascend910"] == "1"

    for resource, name in [("v1/serviceaccounts", "qwen2-w8a8-worker"),
                           ("rbac.authorization.k8s.io/v1/roles", "qwen2-w8a8-worker"),
                           ("rbac.authorization.k8s.io/v1/rolebindings", "qwen2-w8a8-worker"),
                           ("v1/configmaps", "qwen2-w8a8-config"), ("v1/services", "qwen2-w8a8"),
                           ("batch/v1/jobs", "qwen2-w8a8")]:
        child = stored(cluster, resource, name)
        assert child is not None, resource
        owners = child["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [("QuantJob", "qwen2-w8a8", "uid-1")], resource



async def test_job_status_is_mirrored_and_progress_kept(cluster: Any, start_operator: Any) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: quantjob_status(cluster).get("runner"))
        # rank 0's progress, written through the status subresource as the worker does
        await patch_status(cluster, QUANTJOBS, "qwen2-w8a8", {"progress": {"layersDone": 3, "layersTotal": 28}})

        await patch_status(cluster, "batch/v1/jobs", "qwen2-w8a8",
                           {"active": 2, "startTime": "2025-01-01T00:00:00Z"})
        running = await eventually(lambda: quantjob_status(cluster).get("phase") == "Running"
                                   and quantjob_status(cluster))
        assert running["startTime"] == "2025-01-01T00:00:00Z"
        assert condition(running, "Running")["status"] == "True"
        assert running["progress"] == {"layersDone": 3, "layersTotal": 28}

        await patch_status(cluster, "batch/v1/jobs", "qwen2-w8a8", {
            "active": 0, "succeeded": 2, "completionTime": "2025-01-01T01:00:00Z",
            "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}]})
        done = await eventually(lambda: quantjob_status(cluster).get("phase") == "Succeeded"
                                and quantjob_status(cluster))
    assert done["completionTime"] == "2025-01-01T01:00:00Z"
    assert condition(done, "Complete")["status"] == "True" and condition(done, "Running")["status"] == "False"
    assert condition(done, "Valid")["status"] == "True"  # the operator's own earlier condition survives
    assert done["progress"] == {"layersDone": 3, "layersTotal": 28}  # never overwritten by the operator


async def test_suspended_job_is_pending_with_reason(cluster: Any, start_operator: Any) -> None:
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2, queueName="team-a"))
        job = await eventually(lambda: stored(cluster, "batch/v1/jobs", "qwen2-w8a8"))
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        await patch_status(cluster, "batch/v1/jobs", "qwen2-w8a8", {"conditions": [
            {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "waiting in team-a"}]})
        status = await eventually(lambda: condition(quantjob_status(cluster), "Suspended").get("status") == "True"
                                  and quantjob_status(cluster))
    assert status["phase"] == "Pending"
    assert condition(status, "Suspended")["message"] == "waiting in team-a"


async def test_failed_job_surfaces_the_pod_termination_message(cluster: Any, start_operator: Any) -> None:
    import kmock
    async with start_operator():
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, "batch/v1/jobs", "qwen2-w8a8"))
        corrupt = "model.safetensors: header is corrupt; re-download the checkpoint"
        for index, (code, message) in enumerate([(0, ""), (3, corrupt)]):
            name = f"qwen2-w8a8-{index}-abcde"
            cluster.objects[kmock.resource("v1/pods"), NAMESPACE, name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"pod-{index}",
                             "labels": {"quantjob.io/name": "qwen2-w8a8",
                                        "batch.kubernetes.io/job-completion-index": str(index)}},
                "status": {"phase": "Failed" if code else "Running", "containerStatuses": [{
                    "name": "worker", "state": {"terminated": {"exitCode": code, "message": message}}
                    if code else {"running": {}}}]}}
        await patch_status(cluster, "batch/v1/jobs", "qwen2-w8a8", {"failed": 4, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit",
             "lastTransitionTime": "2025-01-01T02:00:00Z"}]})
        status = await eventually(lambda: quantjob_status(cluster).get("phase") == "Failed"
                                  and quantjob_status(cluster))
    failed = condition(status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert "rank 1" in failed["message"] and "header is corrupt" in failed["message"]
    assert status["completionTime"] == "2025-01-01T02:00:00Z"


async def test_restart_mid_reconcile_creates_no_duplicates(cluster: Any, start_operator: Any) -> None:
    import kmock

    from quantjob.operator.builders import build_config_map
    from quantjob.operator.review import review_quantjob

    body = quantjob_manifest(count=2)
    # A previous operator died after creating the ConfigMap: it is there, the rest is not.
    resolution = review_quantjob(body)
    assert resolution.job is not None
    config_map = build_config_map(resolution.job, resolution, NAMESPACE)
    cluster.objects[kmock.resource("v1/configmaps"), NAMESPACE, "qwen2-w8a8-config"] = config_map
    cluster.objects[kmock.resource(QUANTJOBS), NAMESPACE, "qwen2-w8a8"] = body

    async with start_operator():
        await eventually(lambda: quantjob_status(cluster).get("runner"))
        await eventually(lambda: stored(cluster, "batch/v1/jobs", "qwen2-w8a8"))
    posts_first = [(r.resource, r.data.get("metadata", {}).get("name")) for r in cluster
                   if r.method == "POST"]
    async with start_operator():  # a second restart: everything is handled already
        await asyncio.sleep(2)
    posts_all = [(r.resource, r.data.get("metadata", {}).get("name")) for r in cluster
                 if r.method == "POST"]

    # kmock has no resourceVersion, so kopf may re-run the create handler on its own stale events;
    # every re-run meets 409 and changes nothing, which is what a restart mid-reconcile relies on.
    assert len(set(posts_first)) == 6
    assert posts_all == posts_first  # the restarted operator sent no create at all
    for resource in ("v1/configmaps", "v1/services", "batch/v1/jobs", "v1/serviceaccounts",
                     "rbac.authorization.k8s.io/v1/roles", "rbac.authorization.k8s.io/v1/rolebindings"):
        keys = [key for key in cluster.objects if key[0] == kmock.resource(resource)]
        assert len(keys) == 1, (resource, keys)
        assert len(cluster.objects[keys[0]].history) == 1, resource  # created once, never replaced
    assert stored(cluster, "v1/configmaps", "qwen2-w8a8-config") == config_map  # the survivor kept


@pytest.mark.parametrize("spec, path", [
    ({"config": {"apiversion": "modelslim_v1", "spec": {"runner": "layer_wise", "process": [
        {"type": "linear_quant", "qconfig": {
            "act": {"scope": "per_tensor", "dtype": "int8", "symmetric": False, "method": "minmax"},
            "weight": {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}},
         "include": ["*"]}], "save": [{"type": "ascendv1_saver"}]}}, "quantType": None},
     "spec.config.spec.runner"),
    ({"devices": {"type": "npu", "count": 0}}, "spec.devices.count"),
])
async def test_invalid_spec_creates_nothing(cluster: Any, start_operator: Any, spec: dict[str, Any],
                                            path: str) -> None:
    body = quantjob_manifest(count=2)
    body["spec"].update(spec)
    body["spec"] = {key: value for key, value in body["spec"].items() if value is not None}
    async with start_operator():
        await create_quantjob(cluster, body)
        status = await eventually(lambda: quantjob_status(cluster).get("phase") and quantjob_status(cluster))
        await asyncio.sleep(0.5)
    assert status["phase"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "Invalid" and path in failed["message"]
    assert condition(status, "Valid")["status"] == "False"
    for resource in ("v1/configmaps", "v1/services", "batch/v1/jobs", "v1/serviceaccounts"):
        assert stored(cluster, resource, "qwen2-w8a8") is None
    assert stored(cluster, "v1/configmaps", "qwen2-w8a8-config") is None
