"""Manifest builders: pure functions, checked field by field without a cluster."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import quantjob_manifest

from quantjob.operator.builders import build_children, check_name
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import Settings


def children(body: dict[str, Any], settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    resolution = review_quantjob(body)
    assert resolution.ok and resolution.job is not None, resolution.problems
    return {obj["kind"]: obj for obj in build_children(resolution.job, resolution, settings or Settings())}


def container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objs["Job"]["spec"]["template"]["spec"]["containers"][0]


def env_of(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


def test_job_forms_one_group_of_indexed_pods() -> None:
    objs = children(quantjob_manifest(count=4))
    job = objs["Job"]
    assert [o["metadata"]["name"] for o in objs.values()] == [
        "qwen2-w8a8-worker", "qwen2-w8a8-worker", "qwen2-w8a8-worker", "qwen2-w8a8-config", "qwen2-w8a8", "qwen2-w8a8"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["backoffLimit"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == objs["Service"]["metadata"]["name"] == "qwen2-w8a8"
    assert pod["restartPolicy"] == "Never" and pod["runtimeClassName"] == "ascend"
    env = env_of(objs)
    assert env["MASTER_ADDR"] == "qwen2-w8a8-0.qwen2-w8a8" and env["MASTER_PORT"] == "29500"
    assert env["WORLD_SIZE"] == "4" and env["QUANTJOB_NAME"] == "qwen2-w8a8"
    assert env["HCCL_IF_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert "RANK" not in env  # JOB_COMPLETION_INDEX, set by the Job controller, is the rank
    assert objs["Service"]["spec"]["clusterIP"] == "None"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules


def test_worker_command_matches_the_worker_flags() -> None:
    body = quantjob_manifest(count=2, nextLayerInput="quantized")
    body["spec"]["model"].update(trustRemoteCode=True, modelType="qwen2")
    body["spec"]["output"]["overwrite"] = True
    assert container(children(body))["command"] == [
        "quantjob", "quantize", "--model_path", "/mnt/model/Qwen2-7B", "--save_path", "/mnt/output/Qwen2-7B-w8a8",
        "--config_path", "/etc/quantjob/config.yaml", "--device", "npu",
        "--calib_file", "/mnt/calibration/calib/boolq.jsonl", "--calib_samples", "16", "--max_length", "256",
        "--trust_remote_code", "--model_type", "qwen2", "--overwrite", "--next_layer_input", "quantized"]


def test_config_map_holds_the_resolved_config() -> None:
    config = yaml.safe_load(children(quantjob_manifest(count=2))["ConfigMap"]["data"]["config.yaml"])
    assert config["apiversion"] == "modelslim_v1" and config["spec"]["runner"] == "dp_layer_wise"
    assert [s["type"] for s in config["spec"]["save"]] == ["distributed_ascendv1_saver"]
    single = yaml.safe_load(children(quantjob_manifest(count=1))["ConfigMap"]["data"]["config.yaml"])
    assert single["spec"]["runner"] == "layer_wise" and single["spec"]["save"][0]["type"] == "ascendv1_saver"


@pytest.mark.parametrize("devices, resource", [
    ({"type": "npu", "count": 2}, "huawei.com/Ascend910"),
    ({"type": "cuda", "count": 2}, "nvidia.com/gpu"),
    ({"type": "npu", "count": 2, "resourceName": "huawei.com/Ascend910B3"}, "huawei.com/Ascend910B3"),
    ({"type": "cpu", "count": 2}, None),
])
def test_one_device_per_pod(devices: dict[str, Any], resource: str | None) -> None:
    body = quantjob_manifest(devices=devices, resources={"requests": {"cpu": "4"}, "limits": {"memory": "8Gi"}})
    resources = container(children(body))["resources"]
    limits = dict(resources["limits"])
    assert limits.pop("memory") == "8Gi" and resources["requests"] == {"cpu": "4"}
    assert limits == ({resource: "1"} if resource else {})


def test_operator_settings_change_defaults() -> None:
    settings = Settings(worker_image="registry.local/worker:2", npu_resource_name="huawei.com/Ascend910B4",
                        npu_runtime_class=None, master_port=23456)
    objs = children(quantjob_manifest(count=2), settings)
    pod = objs["Job"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.local/worker:2"
    assert pod["containers"][0]["resources"]["limits"] == {"huawei.com/Ascend910B4": "1"}
    assert "runtimeClassName" not in pod and env_of(objs)["MASTER_PORT"] == "23456"
    assert children(quantjob_manifest(image="mine:1"), settings)["Job"]["spec"]["template"]["spec"][
        "containers"][0]["image"] == "mine:1"


def test_user_hccl_interface_replaces_pod_ip() -> None:
    env = env_of(children(quantjob_manifest(env={"HCCL_SOCKET_IFNAME": "eth0", "WORLD_SIZE": "99"})))
    assert env["HCCL_SOCKET_IFNAME"] == "eth0" and "HCCL_IF_IP" not in env
    assert env["WORLD_SIZE"] == "2"  # the group's own variables cannot be overridden


def test_volumes_and_restricted_security_context() -> None:
    objs = children(quantjob_manifest(count=2))
    pod = objs["Job"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container(objs)["volumeMounts"]}
    assert mounts["/mnt/model"]["readOnly"] is True and not mounts["/mnt/output"].get("readOnly")
    assert mounts["/mnt/calibration"]["name"] == "model"  # same claim as the model unless calibration.pvc
    assert mounts["/tmp"]["name"] == "scratch"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["config"]["configMap"]["name"] == "qwen2-w8a8-config"
    security = container(objs)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_queue_label_suspends_the_job() -> None:
    job = children(quantjob_manifest(queueName="team-a"))["Job"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    assert "suspend" not in children(quantjob_manifest())["Job"]["spec"]


def test_worker_role_allows_only_this_quantjob_status() -> None:
    objs = children(quantjob_manifest())
    assert objs["Role"]["rules"] == [{"apiGroups": ["quantjob.io"], "resources": ["quantjobs/status"],
                                      "resourceNames": ["qwen2-w8a8"], "verbs": ["get", "patch"]}]
    assert objs["RoleBinding"]["subjects"][0]["name"] == objs["ServiceAccount"]["metadata"]["name"]


def test_name_rules() -> None:
    assert check_name("a" * 61, 2) == []  # hostname a...a-1 is 63 characters
    (problem,) = check_name("a" * 61, 11)  # a...a-10 is 64
    assert problem.path == "metadata.name" and "at most 60 characters" in problem.message
    assert check_name("Qwen", 1)[0].path == "metadata.name"
    assert check_name("7b", 1) and check_name("a.b", 1)


def test_operator_package_imports_neither_worker_nor_torch() -> None:
    package = Path(__file__).resolve().parents[2] / "src" / "quantjob" / "operator"
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("quantjob.worker", "torch")), f"{source.name} imports {name}"
