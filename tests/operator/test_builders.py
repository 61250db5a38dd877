"""Manifest builders: pure functions, checked field by field without a cluster."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import quantjob_manifest

from quantjob.operator.builders import build_children, check_name, owner_reference
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import PodDefaults, Settings


def children(body: dict[str, Any], settings: Settings | None = None, attempt: int = 1) -> dict[str, dict[str, Any]]:
    settings = settings or Settings()
    resolution = review_quantjob(body, settings)
    assert resolution.ok and resolution.job is not None, resolution.problems
    objs = build_children(resolution.job, resolution, settings, attempt=attempt)
    return {obj["kind"] + ("/progress" if obj["metadata"]["name"].endswith("-progress") else ""): obj
            for obj in objs}


def pod_of(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objs["Job"]["spec"]["template"]["spec"]


def container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return pod_of(objs)["containers"][0]


def env_of(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


def test_job_forms_one_group_of_indexed_pods() -> None:
    objs = children(quantjob_manifest(count=4))
    job = objs["Job"]
    assert list(objs) == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ConfigMap/progress", "Service", "Job"]
    assert job["metadata"]["name"] == "qwen2-w8a8-a1"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    pod = pod_of(objs)
    assert pod["subdomain"] == objs["Service"]["metadata"]["name"] == "qwen2-w8a8"
    assert pod["restartPolicy"] == "Never" and "runtimeClassName" not in pod  # no RuntimeClass unless configured
    env = env_of(objs)
    assert env["MASTER_ADDR"] == "qwen2-w8a8-a1-0.qwen2-w8a8" and env["MASTER_PORT"] == "29500"
    assert env["WORLD_SIZE"] == "4" and env["QUANTJOB_NAME"] == "qwen2-w8a8" and env["QUANTJOB_ATTEMPT"] == "1"
    assert env["HCCL_IF_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert "RANK" not in env  # JOB_COMPLETION_INDEX, set by the Job controller, is the rank
    assert objs["Service"]["spec"]["clusterIP"] == "None"


def test_any_rank_failure_ends_the_attempt_and_the_rule_tells_why() -> None:
    spec = children(quantjob_manifest(count=4))["Job"]["spec"]
    assert spec["backoffLimit"] == 0  # the Job controller never replaces one rank of a group
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In",
                                                             "values": [2, 3]}}  # the worker's user errors
    assert rules[1] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[2]["onExitCodes"] == {"containerName": "worker", "operator": "NotIn", "values": [0]}
    assert all(rule["action"] == "FailJob" for rule in rules)  # nothing is Ignored: no lone replacement rank


def test_each_attempt_gets_its_own_job_and_rendezvous() -> None:
    first, second = children(quantjob_manifest(count=2)), children(quantjob_manifest(count=2), attempt=2)
    assert second["Job"]["metadata"]["name"] == "qwen2-w8a8-a2"
    assert env_of(second)["MASTER_ADDR"] == "qwen2-w8a8-a2-0.qwen2-w8a8" != env_of(first)["MASTER_ADDR"]
    assert env_of(second)["QUANTJOB_ATTEMPT"] == "2"
    assert second["Job"]["spec"]["template"]["metadata"]["labels"]["quantjob.io/attempt"] == "2"
    assert container(second)["args"] == container(first)["args"]  # same output directory: the worker resumes


def test_worker_args_match_the_worker_flags() -> None:
    body = quantjob_manifest(count=2, nextLayerInput="quantized", rendezvousTimeoutSeconds=900,
                             collectiveTimeoutSeconds=1200)
    body["spec"]["model"].update(trustRemoteCode=True, modelType="qwen2")
    body["spec"]["output"]["overwrite"] = True
    worker = container(children(body))
    assert "command" not in worker  # the image's entry point (CANN's environment) runs first
    assert worker["args"] == [
        "quantize", "--model_path", "/mnt/model/Qwen2-7B", "--save_path", "/mnt/output/Qwen2-7B-w8a8",
        "--config_path", "/etc/quantjob/config.yaml", "--device", "npu",
        "--calib_file", "/mnt/calibration/calib/boolq.jsonl", "--calib_samples", "16", "--max_length", "256",
        "--trust_remote_code", "--model_type", "qwen2", "--overwrite", "--next_layer_input", "quantized",
        "--rendezvous_timeout", "900", "--collective_timeout", "1200"]


@pytest.mark.parametrize("rendezvous, collective, connect, execute", [
    (600, 1800, "600", "1800"),      # the defaults
    (30, 60, "120", "68"),           # raised to CANN's minimum
    (7200, 17340, "7200", "17340"),  # CANN's maximum
])
def test_hccl_timeouts_follow_the_worker_timeouts(rendezvous: int, collective: int, connect: str,
                                                  execute: str) -> None:
    env = env_of(children(quantjob_manifest(rendezvousTimeoutSeconds=rendezvous,
                                            collectiveTimeoutSeconds=collective)))
    assert (env["HCCL_CONNECT_TIMEOUT"], env["HCCL_EXEC_TIMEOUT"]) == (connect, execute)
    assert "HCCL_CONNECT_TIMEOUT" not in env_of(children(quantjob_manifest(devices={"type": "cpu", "count": 2})))


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
                        npu_runtime_class="ascend", master_port=23456)
    objs = children(quantjob_manifest(count=2), settings)
    pod = pod_of(objs)
    assert pod["containers"][0]["image"] == "registry.local/worker:2"
    assert pod["containers"][0]["resources"]["limits"] == {"huawei.com/Ascend910B4": "1"}
    assert pod["runtimeClassName"] == "ascend" and env_of(objs)["MASTER_PORT"] == "23456"
    assert container(children(quantjob_manifest(image="mine:1"), settings))["image"] == "mine:1"
    cpu = pod_of(children(quantjob_manifest(devices={"type": "cpu", "count": 2}), settings))
    assert "runtimeClassName" not in cpu


def test_user_env_and_defaults_env_never_override_ours() -> None:
    settings = Settings(pod_defaults=PodDefaults(env={"WORLD_SIZE": "7", "ASCEND_GLOBAL_LOG_LEVEL": "3",
                                                      "HCCL_BUFFSIZE": "100"}))
    env = env_of(children(quantjob_manifest(env={"HCCL_SOCKET_IFNAME": "eth0", "HCCL_BUFFSIZE": "200"}), settings))
    assert env["HCCL_SOCKET_IFNAME"] == "eth0" and "HCCL_IF_IP" not in env
    assert env["WORLD_SIZE"] == "2" and env["HF_HUB_OFFLINE"] == "1"  # ours win over the defaults
    assert env["HCCL_BUFFSIZE"] == "200" and env["ASCEND_GLOBAL_LOG_LEVEL"] == "3"  # the QuantJob's over defaults


def test_volumes_shm_and_restricted_security_context() -> None:
    objs = children(quantjob_manifest(count=2, shmSize="4Gi"))
    pod = pod_of(objs)
    mounts = {m["mountPath"]: m for m in container(objs)["volumeMounts"]}
    assert mounts["/mnt/model"]["readOnly"] is True and not mounts["/mnt/output"].get("readOnly")
    assert mounts["/mnt/calibration"]["name"] == "model"  # same claim as the model unless calibration.pvc
    assert mounts["/tmp"]["name"] == "scratch"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["config"]["configMap"]["name"] == "qwen2-w8a8-config"
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    assert children(quantjob_manifest())["Job"]["spec"]["template"]["spec"]["volumes"][4]["emptyDir"][
        "sizeLimit"] == "1Gi"
    security = container(objs)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"  # issue 14.16


def test_active_deadline_has_a_default_and_follows_the_spec() -> None:  # issue 14.5
    assert children(quantjob_manifest())["Job"]["spec"]["activeDeadlineSeconds"] == 86_400
    assert children(quantjob_manifest(activeDeadlineSeconds=3600))["Job"]["spec"]["activeDeadlineSeconds"] == 3600


def test_token_only_as_a_short_lived_projection_and_only_for_progress() -> None:  # issue 14.16
    objs = children(quantjob_manifest())
    pod = pod_of(objs)
    assert pod["automountServiceAccountToken"] is False
    assert objs["ServiceAccount"]["automountServiceAccountToken"] is False
    (token,) = [v for v in pod["volumes"] if v["name"] == "api-token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 3600
    quiet = children(quantjob_manifest(), Settings(progress_reporting=False))
    assert not [v for v in pod_of(quiet)["volumes"] if "projected" in v]
    assert "Role" not in quiet and "QUANTJOB_PROGRESS_CONFIGMAP" not in env_of(quiet)


def test_worker_role_allows_only_its_progress_config_map() -> None:  # issue 14.16
    objs = children(quantjob_manifest())
    assert objs["Role"]["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                      "resourceNames": ["qwen2-w8a8-progress"], "verbs": ["get", "patch"]}]
    assert objs["RoleBinding"]["subjects"][0]["name"] == objs["ServiceAccount"]["metadata"]["name"]
    assert env_of(objs)["QUANTJOB_PROGRESS_CONFIGMAP"] == "qwen2-w8a8-progress"


def test_queue_label_suspends_the_job() -> None:
    job = children(quantjob_manifest(queueName="team-a"))["Job"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    assert "suspend" not in children(quantjob_manifest())["Job"]["spec"]


@pytest.mark.parametrize("gang, api, scheduler", [
    ("volcano", "scheduling.volcano.sh/v1beta1", "volcano"),
    ("coscheduling", "scheduling.x-k8s.io/v1alpha1", "scheduler-plugins-scheduler"),
])
def test_gang_scheduling_puts_the_group_in_one_pod_group(gang: str, api: str, scheduler: str) -> None:
    objs = children(quantjob_manifest(count=4, scheduling={"gang": gang}), attempt=3)
    group = objs["PodGroup"]
    assert group["apiVersion"] == api and group["metadata"]["name"] == "qwen2-w8a8-a3"
    assert group["spec"]["minMember"] == 4
    pod = pod_of(objs)
    template = objs["Job"]["spec"]["template"]["metadata"]
    assert pod["schedulerName"] == scheduler
    if gang == "volcano":
        assert template["annotations"]["scheduling.k8s.io/group-name"] == "qwen2-w8a8-a3"
    else:
        assert template["labels"]["scheduling.x-k8s.io/pod-group"] == "qwen2-w8a8-a3"
        assert group["spec"]["scheduleTimeoutSeconds"] == 1800
    default = children(quantjob_manifest(count=4), Settings(gang_scheduling="volcano"))
    assert default["PodGroup"]["spec"]["minMember"] == 4  # the operator's default gang
    assert "PodGroup" not in children(quantjob_manifest(count=4, scheduling={"gang": "none"}),
                                      Settings(gang_scheduling="volcano"))


def test_volcano_queue_goes_into_the_pod_group() -> None:
    objs = children(quantjob_manifest(scheduling={"gang": "volcano", "queue": "npu-team"}))
    assert objs["PodGroup"]["spec"]["queue"] == "npu-team"


def test_pod_overlay_from_defaults_and_quantjob() -> None:
    defaults = PodDefaults.model_validate({
        "schedulerName": "volcano", "nodeSelector": {"accelerator-type": "module-910b-8", "zone": "a"},
        "tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"}],
        "supplementalGroups": [1001], "annotations": {"a": "default"},
        "volumes": [{"name": "driver", "hostPath": {"path": "/usr/local/Ascend/driver"}}],
        "volumeMounts": [{"name": "driver", "mountPath": "/usr/local/Ascend/driver", "readOnly": True}]})
    body = quantjob_manifest(pod={
        "nodeSelector": {"zone": "b"}, "supplementalGroups": [1001, 2000], "labels": {"ring-controller.atlas":
                                                                                   "ascend-910b"},
        "annotations": {"a": "mine"}, "priorityClassName": "batch-high",
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1"]}]}]}}},
        "volumes": [{"name": "cache", "emptyDir": {}}], "volumeMounts": [{"name": "cache", "mountPath": "/mnt/cache"}]})
    objs = children(body, Settings(pod_defaults=defaults))
    pod, meta = pod_of(objs), objs["Job"]["spec"]["template"]["metadata"]
    assert pod["schedulerName"] == "volcano" and pod["priorityClassName"] == "batch-high"
    assert pod["nodeSelector"] == {"accelerator-type": "module-910b-8", "zone": "b"}
    assert pod["tolerations"] == [{"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["securityContext"]["supplementalGroups"] == [1001, 2000]
    assert pod["affinity"]["nodeAffinity"]
    assert meta["labels"]["ring-controller.atlas"] == "ascend-910b" and meta["labels"]["quantjob.io/name"]
    assert meta["annotations"] == {"a": "mine"}
    names = [v["name"] for v in pod["volumes"]]
    assert names[-2:] == ["driver", "cache"]
    mounts = {m["mountPath"]: m for m in container(objs)["volumeMounts"]}
    assert mounts["/usr/local/Ascend/driver"] == {"name": "driver", "mountPath": "/usr/local/Ascend/driver",
                                                  "readOnly": True}
    assert mounts["/mnt/cache"] == {"name": "cache", "mountPath": "/mnt/cache"}


def test_children_carry_our_labels_and_a_controller_reference_only() -> None:
    body = quantjob_manifest()
    body["metadata"]["labels"] = {"team": "a", "cost-center": "42"}
    for obj in children(body).values():
        assert "team" not in obj["metadata"]["labels"], obj["kind"]  # kopf.adopt used to copy these
    reference = owner_reference(body)
    assert reference == {"apiVersion": "quantjob.io/v1alpha1", "kind": "QuantJob", "name": "qwen2-w8a8",
                         "uid": "uid-1", "controller": True,
                         "blockOwnerDeletion": True}  # issue 26.4b: a foreground delete waits for the ranks


def test_network_policy_admits_only_the_jobs_own_pods() -> None:  # issue 14.16
    objs = children(quantjob_manifest(), Settings(network_policy=True))
    policy = objs["NetworkPolicy"]["spec"]
    own = {"matchLabels": {"quantjob.io/name": "qwen2-w8a8"}}
    assert policy == {"podSelector": own, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": own}]}]}
    assert "NetworkPolicy" not in children(quantjob_manifest())


def test_name_rules() -> None:
    assert check_name("a" * 57, 2, 14) == []  # hostname a...a-a14-1 is 63 characters
    (problem,) = check_name("a" * 57, 11, 14)  # a...a-a14-10 is 64
    assert problem.path == "metadata.name" and "at most 56 characters" in problem.message
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
