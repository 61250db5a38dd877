"""Manifest builders: pure functions from a QuantJob (and the operator settings) to child objects.

Children of QuantJob ``<name>`` (all deterministic, so a restarted operator finds them again):

- ServiceAccount, Role, RoleBinding ``<name>-worker``: rank 0 may ``get``/``patch`` the status of
  this one QuantJob and nothing else;
- ConfigMap ``<name>-config``: ``config.yaml`` = the resolved modelslim_v1 config;
- Service ``<name>``: headless, gives pod ``i`` the DNS name ``<name>-i.<name>``;
- Job ``<name>``: Indexed, one pod per device, pod ``i`` = rank ``i``.

Owner references are not set here (they need the live object's uid): the handlers call
``kopf.adopt`` on these dicts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from quantjob.api.check import Resolution
from quantjob.api.problems import Problem
from quantjob.api.resource import GROUP, PLURAL, QuantJob
from quantjob.operator.settings import Settings

Manifest = dict[str, Any]

LABEL_NAME = "quantjob.io/name"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONFIG_FILE = "config.yaml"
CONFIG_DIR = "/etc/quantjob"
MODEL_MOUNT = "/mnt/model"
OUTPUT_MOUNT = "/mnt/output"
CALIBRATION_MOUNT = "/mnt/calibration"
SCRATCH_MOUNT = "/tmp"
CONTAINER_NAME = "worker"
WORKER_UID = 10001  # the uid of the worker image (Dockerfile: QUANTJOB_UID)
MAX_LABEL = 63
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ChildNames:
    """Names of everything the operator creates for QuantJob ``name``."""

    quantjob: str

    @property
    def job(self) -> str:
        return self.quantjob

    @property
    def service(self) -> str:
        return self.quantjob

    @property
    def config(self) -> str:
        return f"{self.quantjob}-config"

    @property
    def worker(self) -> str:
        return f"{self.quantjob}-worker"

    def master_addr(self) -> str:
        return f"{self.job}-0.{self.service}"


def check_name(name: str, world_size: int) -> list[Problem]:
    """The QuantJob name becomes a Service name (DNS-1035 label) and pod hostnames ``<name>-<index>``."""
    if not _DNS_LABEL.match(name or ""):
        return [Problem("metadata.name", f"name {name!r} must be a DNS label: lowercase letters, digits and "
                                         "'-', starting with a letter and ending with a letter or digit")]
    longest_host = f"{name}-{max(world_size, 1) - 1}"
    if len(longest_host) > MAX_LABEL:
        limit = MAX_LABEL - (len(longest_host) - len(name))
        return [Problem("metadata.name", f"name {name!r} is {len(name)} characters; with {world_size} devices "
                                         f"the pod hostname {longest_host!r} exceeds {MAX_LABEL}, so use at most "
                                         f"{limit} characters")]
    return []


def labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "quantjob",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "quantjob-operator",
        LABEL_NAME: name,
    }


def _metadata(name: str, owner: str, namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels(owner)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def build_config_map(job: QuantJob, resolution: Resolution, namespace: str | None) -> Manifest:
    if resolution.config is None:
        raise ValueError("the resolution holds no config; build children only for a QuantJob that passed check")
    name = job.metadata["name"]
    config = resolution.config.model_dump(mode="json", exclude_none=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ChildNames(name).config, name, namespace),
        "data": {CONFIG_FILE: yaml.safe_dump(config, sort_keys=False)},
    }


def build_service(job: QuantJob, settings: Settings, namespace: str | None) -> Manifest:
    name = job.metadata["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ChildNames(name).service, name, namespace),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_NAME: name},
            "publishNotReadyAddresses": True,  # ranks rendezvous before any readiness
            "ports": [{"name": "rendezvous", "port": settings.master_port, "targetPort": settings.master_port,
                       "protocol": "TCP"}],
        },
    }


def build_worker_access(job: QuantJob, namespace: str | None) -> list[Manifest]:
    """ServiceAccount + Role + RoleBinding: get/patch ``quantjobs/status`` of this QuantJob only."""
    name = job.metadata["name"]
    worker = ChildNames(name).worker
    account: Manifest = {"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": _metadata(worker, name, namespace)}
    role: Manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(worker, name, namespace),
        "rules": [{"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "resourceNames": [name],
                   "verbs": ["get", "patch"]}],
    }
    subject: dict[str, str] = {"kind": "ServiceAccount", "name": worker}
    if namespace:
        subject["namespace"] = namespace
    binding: Manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(worker, name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": worker},
        "subjects": [subject],
    }
    return [account, role, binding]


def worker_command(job: QuantJob) -> list[str]:
    """The pod command: the worker's ``quantjob quantize`` flags (the contract with the worker)."""
    spec = job.spec
    command = [
        "quantjob", "quantize",
        "--model_path", f"{MODEL_MOUNT}/{spec.model.path}",
        "--save_path", f"{OUTPUT_MOUNT}/{spec.output.path}",
        "--config_path", f"{CONFIG_DIR}/{CONFIG_FILE}",
        "--device", spec.devices.type,
    ]
    if spec.calibration.path:
        command += ["--calib_file", f"{CALIBRATION_MOUNT}/{spec.calibration.path}"]
    command += ["--calib_samples", str(spec.calibration.samples), "--max_length", str(spec.calibration.maxLength)]
    if spec.model.trustRemoteCode:
        command.append("--trust_remote_code")
    if spec.model.modelType:
        command += ["--model_type", spec.model.modelType]
    if spec.output.overwrite:
        command.append("--overwrite")
    command += ["--next_layer_input", spec.nextLayerInput]
    return command


def worker_env(job: QuantJob, world_size: int, settings: Settings, namespace: str | None) -> list[dict[str, Any]]:
    """Group env (rank comes from ``JOB_COMPLETION_INDEX``, set by the Job controller) plus user env."""
    name = job.metadata["name"]
    env: list[dict[str, Any]] = [
        {"name": "MASTER_ADDR", "value": ChildNames(name).master_addr()},
        {"name": "MASTER_PORT", "value": str(settings.master_port)},
        {"name": "WORLD_SIZE", "value": str(world_size)},
        {"name": "QUANTJOB_NAME", "value": name},
        {"name": "QUANTJOB_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HOME", "value": SCRATCH_MOUNT},
        {"name": "TMPDIR", "value": SCRATCH_MOUNT},
    ]
    if job.spec.devices.type == "npu" and "HCCL_SOCKET_IFNAME" not in job.spec.env:
        env.append({"name": "HCCL_IF_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    ours = {item["name"] for item in env}
    env += [{"name": key, "value": value} for key, value in sorted(job.spec.env.items()) if key not in ours]
    return env


def _volumes(job: QuantJob, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = job.spec
    volumes: list[dict[str, Any]] = [
        {"name": "model", "persistentVolumeClaim": {"claimName": spec.model.pvc, "readOnly": True}},
        {"name": "output", "persistentVolumeClaim": {"claimName": spec.output.pvc}},
        {"name": "config", "configMap": {"name": ChildNames(name).config}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
        {"name": "output", "mountPath": OUTPUT_MOUNT},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_MOUNT},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    if spec.calibration.path:
        claim = spec.calibration.pvc or spec.model.pvc
        volume = "model" if claim == spec.model.pvc else "calibration"
        if volume == "calibration":
            volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": volume, "mountPath": CALIBRATION_MOUNT, "readOnly": True})
    return volumes, mounts


def _resources(job: QuantJob, settings: Settings) -> dict[str, dict[str, str]]:
    requests = {key: str(value) for key, value in job.spec.resources.requests.items()}
    limits = {key: str(value) for key, value in job.spec.resources.limits.items()}
    device = settings.resource_name(job.spec.devices.type, job.spec.devices.resourceName)
    if device:
        limits[device] = "1"  # one device per pod: pod i drives device i of the group
        requests.pop(device, None)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def build_job(job: QuantJob, resolution: Resolution, settings: Settings, namespace: str | None) -> Manifest:
    name = job.metadata["name"]
    names = ChildNames(name)
    world_size = resolution.world_size
    volumes, mounts = _volumes(job, name)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": job.spec.image or settings.worker_image,
        "command": worker_command(job),
        "env": worker_env(job, world_size, settings, namespace),
        "ports": [{"name": "rendezvous", "containerPort": settings.master_port, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    resources = _resources(job, settings)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": names.service,
        "serviceAccountName": names.worker,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if job.spec.devices.type == "npu" and settings.npu_runtime_class:
        pod_spec["runtimeClassName"] = settings.npu_runtime_class
    metadata = _metadata(names.job, name, namespace)
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": world_size,
        "parallelism": world_size,
        "backoffLimit": job.spec.backoffLimit,
        # Preemption, eviction and node drains mark pods with DisruptionTarget: retry without counting them.
        "podFailurePolicy": {"rules": [{"action": "Ignore",
                                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
        "template": {"metadata": {"labels": labels(name)}, "spec": pod_spec},
    }
    if job.spec.queueName:
        metadata["labels"][KUEUE_QUEUE_LABEL] = job.spec.queueName
        job_spec["suspend"] = True  # Kueue admits (unsuspends) it when the queue has room
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def build_children(job: QuantJob, resolution: Resolution, settings: Settings,
                   namespace: str | None = None) -> list[Manifest]:
    """All children in creation order (access and config before the Job that uses them)."""
    namespace = namespace or job.metadata.get("namespace")
    return [
        *build_worker_access(job, namespace),
        build_config_map(job, resolution, namespace),
        build_service(job, settings, namespace),
        build_job(job, resolution, settings, namespace),
    ]
