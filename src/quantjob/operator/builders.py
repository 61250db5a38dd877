"""Manifest builders: pure functions from a QuantJob (and the operator settings) to child objects.

Children of QuantJob ``<name>`` (all deterministic, so a restarted operator finds them again):

- ServiceAccount ``<name>-worker`` (no token mounted by default); with progress reporting, a
  Role and RoleBinding ``<name>-worker``: ``get``/``patch`` of the ConfigMap ``<name>-progress``
  and nothing else (the worker never writes the QuantJob itself);
- ConfigMap ``<name>-config``: ``config.yaml`` = the resolved modelslim_v1 config;
- ConfigMap ``<name>-progress``: written by rank 0, mirrored into ``status.progress`` by the operator;
- Service ``<name>``: headless, gives pod ``i`` of attempt ``N`` the DNS name ``<name>-aN-i.<name>``;
- Job ``<name>-a<N>``: attempt N, Indexed, one pod per device, pod ``i`` = rank ``i``. A new attempt
  is a new Job, so its rank 0 has a new hostname: a rank of the new attempt can never reach the
  old attempt's rendezvous store;
- optionally a PodGroup ``<name>-a<N>`` (gang scheduling) and a NetworkPolicy ``<name>``.

Every child carries our labels only (never the QuantJob's) and, when built for a live QuantJob, an
owner reference with ``controller: true`` and ``blockOwnerDeletion: true``: a foreground delete of
the QuantJob (``kubectl delete --cascade=foreground``) returns only once its Job, hence every rank,
is gone, so "delete and recreate" cannot start a second group on the same output while the first
still writes. The flag needs ``update`` on ``quantjobs/finalizers`` where the API server enforces
OwnerReferencesPermissionEnforcement (``rbac.py`` grants it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel

from quantjob.api.check import Resolution
from quantjob.api.exit_codes import USER_ERRORS
from quantjob.api.pod_layout import (
    CALIBRATION_MOUNT,
    CONFIG_DIR,
    MODEL_MOUNT,
    OUTPUT_MOUNT,
    SCRATCH_MOUNT,
    SERVICE_ACCOUNT_DIR,
    SHM_MOUNT,
)
from quantjob.api.problems import Problem
from quantjob.api.resource import API_VERSION, KIND, QuantJob
from quantjob.api.run_options import RunOptions, run_options, spec_path
from quantjob.operator import gang, pod_overlay
from quantjob.operator.settings import Settings

Manifest = dict[str, Any]

LABEL_NAME = "quantjob.io/name"
LABEL_ATTEMPT = "quantjob.io/attempt"
LABEL_COMPONENT = "quantjob.io/component"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONFIG_FILE = "config.yaml"
PROGRESS_KEY = "progress.json"
CONTAINER_NAME = "worker"
WORKER_UID = 10001  # the uid of the worker image (Dockerfile: QUANTJOB_UID)
MAX_LABEL = 63
TOKEN_SECONDS = 3600
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# podFailurePolicy rule order; the operator reads the index back from the Job's failure message.
RULE_USER_ERROR, RULE_DISRUPTION, RULE_FAILURE = 0, 1, 2


@dataclass(frozen=True)
class ChildNames:
    """Names of everything the operator creates for QuantJob ``name``."""

    quantjob: str

    def job(self, attempt: int) -> str:
        return f"{self.quantjob}-a{attempt}"

    def pod_group(self, attempt: int) -> str:
        return self.job(attempt)

    @property
    def service(self) -> str:
        return self.quantjob

    @property
    def config(self) -> str:
        return f"{self.quantjob}-config"

    @property
    def progress(self) -> str:
        return f"{self.quantjob}-progress"

    @property
    def worker(self) -> str:
        return f"{self.quantjob}-worker"

    @property
    def network_policy(self) -> str:
        return self.quantjob

    def master_addr(self, attempt: int) -> str:
        return f"{self.job(attempt)}-0.{self.service}"


def check_name(name: str, world_size: int, max_attempts: int = 1) -> list[Problem]:
    """The name becomes a Service name (DNS-1035 label) and pod hostnames ``<name>-a<attempt>-<index>``
    for attempts up to ``max_attempts`` (``maxRestarts + maxDisruptions + 1``)."""
    if not _DNS_LABEL.match(name or ""):
        return [Problem("metadata.name", f"name {name!r} must be a DNS label: lowercase letters, digits and "
                                         "'-', starting with a letter and ending with a letter or digit")]
    longest_host = f"{ChildNames(name).job(max(max_attempts, 1))}-{max(world_size, 1) - 1}"
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


def owner_reference(quantjob: Mapping[str, Any]) -> dict[str, Any]:
    """Our owner reference to a live QuantJob (``blockOwnerDeletion``: see the module doc)."""
    meta = quantjob.get("metadata") or {}
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}


def _metadata(name: str, owner: str, namespace: str | None, **extra_labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**labels(owner), **extra_labels}}
    if namespace:
        meta["namespace"] = namespace
    return meta


# libyaml's emitter when PyYAML has it (same text as the pure-Python one, 15x faster on a large config)
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
CONFIG_MAP_MAX = 1 << 20  # the API server's limit on a ConfigMap's data (core.MaxSecretSize)


def config_text(resolution: Resolution) -> str:
    """``config.yaml`` of the config ConfigMap: the resolved config the worker runs."""
    if resolution.config is None:
        raise ValueError("the resolution holds no config; build children only for a QuantJob that passed check")
    config = resolution.config.model_dump(mode="json", exclude_none=True)
    return str(yaml.dump(config, Dumper=_DUMPER, sort_keys=False))


def config_map_problems(resolution: Resolution) -> list[Problem]:
    """The config's ConfigMap over the API server's 1 MiB limit (it would be refused at creation)."""
    if resolution.config is None:
        return []
    size = len(config_text(resolution).encode("utf-8"))
    if size <= CONFIG_MAP_MAX:
        return []
    return [Problem("spec.config", f"the resolved config is {size} bytes as YAML; its ConfigMap may hold at most "
                                   f"{CONFIG_MAP_MAX} (1 MiB): shorten it (fewer include/exclude patterns)")]


def build_config_map(job: QuantJob, resolution: Resolution, namespace: str | None) -> Manifest:
    name = job.metadata["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ChildNames(name).config, name, namespace, **{LABEL_COMPONENT: "config"}),
        "data": {CONFIG_FILE: config_text(resolution)},
    }


def build_progress_config_map(job: QuantJob, namespace: str | None) -> Manifest:
    """Where rank 0 writes its progress (the only object its account may write)."""
    name = job.metadata["name"]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(ChildNames(name).progress, name, namespace, **{LABEL_COMPONENT: "progress"}),
            "data": {PROGRESS_KEY: "{}"}}


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


def build_worker_access(job: QuantJob, settings: Settings, namespace: str | None) -> list[Manifest]:
    """The pods' ServiceAccount (no automatic token) and, with progress reporting, a Role that may
    only ``get``/``patch`` the progress ConfigMap of this QuantJob."""
    name = job.metadata["name"]
    names = ChildNames(name)
    account: Manifest = {"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": _metadata(names.worker, name, namespace),
                         "automountServiceAccountToken": False}
    if not settings.progress_reporting:
        return [account]
    role: Manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(names.worker, name, namespace),
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [names.progress],
                   "verbs": ["get", "patch"]}],
    }
    subject: dict[str, str] = {"kind": "ServiceAccount", "name": names.worker}
    if namespace:
        subject["namespace"] = namespace
    binding: Manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(names.worker, name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.worker},
        "subjects": [subject],
    }
    return [account, role, binding]


def build_network_policy(job: QuantJob, namespace: str | None) -> Manifest:
    """Only this QuantJob's own pods may connect to its pods (the rendezvous port, gloo's and HCCL's
    host sockets); everything else is refused. Egress is not restricted."""
    name = job.metadata["name"]
    own = {"matchLabels": {LABEL_NAME: name}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _metadata(ChildNames(name).network_policy, name, namespace),
            "spec": {"podSelector": own, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": own}]}]}}


def worker_args(job: QuantJob, model: type[BaseModel] = RunOptions) -> list[str]:
    """The container's args: ``quantjob`` subcommand and flags (the contract with the worker CLI).

    The run options come from their table (``quantjob.api.run_options``), each read where
    ``Option.spec`` says the QuantJob holds it: a boolean is its bare flag when true, another
    value its flag and value when set, a path is prefixed with its volume's mount.

    They are ``args``, not ``command``: the image's entry point runs first (it sets up CANN's
    environment on Ascend images, see ``docker/worker-entrypoint.sh``) and then ``quantjob "$@"``.
    """
    spec = job.spec
    args = ["quantize"]
    for name, (field, option) in run_options(model).items():
        where = spec_path(name, option)
        if where is not None:
            args += _option_args(name, field.annotation, where, _spec_value(spec, where))
        if name == "save_path":  # the operator's own flags: the mounted config and the device type
            args += ["--config_path", f"{CONFIG_DIR}/{CONFIG_FILE}", "--device", spec.devices.type]
    args += ["--rendezvous_timeout", str(spec.rendezvousTimeoutSeconds),
             "--collective_timeout", str(spec.collectiveTimeoutSeconds)]
    return args


_VOLUME_MOUNTS = {"model": MODEL_MOUNT, "output": OUTPUT_MOUNT, "calibration": CALIBRATION_MOUNT}


def _spec_value(spec: Any, where: str) -> Any:
    value = spec
    for part in where.split("."):
        value = getattr(value, part)
    return value


def _option_args(name: str, annotation: Any, where: str, value: Any) -> list[str]:
    if value is None or value is False or value == "":
        return []
    if value is True:
        return [f"--{name}"]
    if Path in (annotation, *get_args(annotation)):  # a path on the pod volume its spec section names
        return [f"--{name}", f"{_VOLUME_MOUNTS[where.split('.')[0]]}/{value}"]
    return [f"--{name}", str(value)]


def hccl_timeouts(job: QuantJob) -> dict[str, str]:
    """HCCL's link-setup and execution timeouts from the worker's own rendezvous and collective ones,
    inside the ranges CANN accepts ([120, 7200] and [68, 17340] seconds)."""
    spec = job.spec
    return {"HCCL_CONNECT_TIMEOUT": str(min(max(spec.rendezvousTimeoutSeconds, 120), 7200)),
            "HCCL_EXEC_TIMEOUT": str(min(max(spec.collectiveTimeoutSeconds, 68), 17340))}


def worker_env(job: QuantJob, world_size: int, settings: Settings, attempt: int,
               default_env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The operator's variables (rank from ``JOB_COMPLETION_INDEX``), then the defaults' and the
    user's; the operator's win, then the user's over the defaults'."""
    name = job.metadata["name"]
    names = ChildNames(name)
    env: list[dict[str, Any]] = [
        {"name": "MASTER_ADDR", "value": names.master_addr(attempt)},
        {"name": "MASTER_PORT", "value": str(settings.master_port)},
        {"name": "WORLD_SIZE", "value": str(world_size)},
        {"name": "QUANTJOB_NAME", "value": name},
        {"name": "QUANTJOB_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "QUANTJOB_ATTEMPT", "value": str(attempt)},
        {"name": "HOME", "value": SCRATCH_MOUNT},
        {"name": "TMPDIR", "value": SCRATCH_MOUNT},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "HF_DATASETS_OFFLINE", "value": "1"},
    ]
    if settings.progress_reporting:
        env += [{"name": "QUANTJOB_PROGRESS_CONFIGMAP", "value": names.progress},
                {"name": "QUANTJOB_SERVICE_ACCOUNT_DIR", "value": SERVICE_ACCOUNT_DIR}]
    others = {**(default_env or {}), **job.spec.env}
    if job.spec.devices.type == "npu":
        env += [{"name": key, "value": value} for key, value in hccl_timeouts(job).items()]
        if "HCCL_SOCKET_IFNAME" not in others:
            env.append({"name": "HCCL_IF_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    ours = {item["name"] for item in env}
    env += [{"name": key, "value": value} for key, value in sorted(others.items()) if key not in ours]
    return env


def _volumes(job: QuantJob, settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = job.spec
    name = job.metadata["name"]
    volumes: list[dict[str, Any]] = [
        {"name": "model", "persistentVolumeClaim": {"claimName": spec.model.pvc, "readOnly": True}},
        {"name": "output", "persistentVolumeClaim": {"claimName": spec.output.pvc}},
        {"name": "config", "configMap": {"name": ChildNames(name).config}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.shmSize)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
        {"name": "output", "mountPath": OUTPUT_MOUNT},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_MOUNT},
        {"name": "shm", "mountPath": SHM_MOUNT},
    ]
    if spec.calibration.path:
        claim = spec.calibration.pvc or spec.model.pvc
        volume = "model" if claim == spec.model.pvc else "calibration"
        if volume == "calibration":
            volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": volume, "mountPath": CALIBRATION_MOUNT, "readOnly": True})
    if settings.progress_reporting:
        # A short-lived token instead of the automatic one, bound to the pod (void once the pod is gone).
        # It carries the API server's default audience, not one of ours: the only reader is the API
        # server itself, which refuses tokens for audiences it does not serve (--api-audiences). A Job
        # has one pod template, so every rank mounts it, but it only lets rank 0's reporter patch this
        # QuantJob's progress ConfigMap.
        volumes.append({"name": "api-token", "projected": {"defaultMode": 0o440, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}})
        mounts.append({"name": "api-token", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True})
    return volumes, mounts


def _resources(job: QuantJob, settings: Settings) -> dict[str, dict[str, str]]:
    requests = {key: str(value) for key, value in job.spec.resources.requests.items()}
    limits = {key: str(value) for key, value in job.spec.resources.limits.items()}
    device = settings.resource_name(job.spec.devices.type, job.spec.devices.resourceName)
    if device:
        limits[device] = "1"  # one device per pod: pod i drives device i of the group
        requests.pop(device, None)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def pod_failure_policy() -> dict[str, Any]:
    """Any rank's end other than success ends the attempt at once (with ``backoffLimit: 0``); the
    rule that matched tells the operator what to do next: a user error (the worker's exit codes 2
    and 3) fails the QuantJob, a disruption or a crash restarts the whole group."""
    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In",
                                              "values": sorted(USER_ERRORS)}},
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "NotIn", "values": [0]}},
    ]}


HOSTNAME_KEY = "kubernetes.io/hostname"


def place_ranks(job: QuantJob, attempt: int, pod_spec: dict[str, Any]) -> None:
    """Where the ranks of one attempt go, added to any affinity the overlays set.

    ``spec.devices.perNode`` = 1: a required pod anti-affinity on the hostname (one rank per node,
    exact). ``perNode`` = k > 1: a topology spread on the hostname with ``maxSkew`` k (no node more
    than k ranks ahead of an eligible node without any) plus a preference for nodes that already
    hold ranks, which fills each node to k. Unset: the preference alone (pack ranks onto as few
    nodes as possible: fewer hops for the collectives, and a ReadWriteOnce claim can be shared).
    """
    selector = {"matchLabels": {LABEL_NAME: job.metadata["name"], LABEL_ATTEMPT: str(attempt)}}
    per_node = job.spec.devices.perNode
    affinity = pod_spec.setdefault("affinity", {})
    if per_node == 1:
        anti = affinity.setdefault("podAntiAffinity", {})
        anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", []).append(
            {"labelSelector": selector, "topologyKey": HOSTNAME_KEY})
        return
    together = affinity.setdefault("podAffinity", {})
    together.setdefault("preferredDuringSchedulingIgnoredDuringExecution", []).append(
        {"weight": 100, "podAffinityTerm": {"labelSelector": selector, "topologyKey": HOSTNAME_KEY}})
    if per_node is not None:
        pod_spec.setdefault("topologySpreadConstraints", []).append(
            {"maxSkew": per_node, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": selector, "minDomains": job.spec.devices.count // per_node})


def build_job(job: QuantJob, resolution: Resolution, settings: Settings, namespace: str | None,
              attempt: int = 1) -> Manifest:
    name = job.metadata["name"]
    names = ChildNames(name)
    world_size = resolution.world_size
    overlay = pod_overlay.merge(settings.pod_defaults, job.spec.pod)
    volumes, mounts = _volumes(job, settings)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": job.spec.image or settings.worker_image,
        "args": worker_args(job),
        "env": worker_env(job, world_size, settings, attempt, overlay.env),
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
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "fsGroupChangePolicy": "OnRootMismatch",  # no recursive chown of a large model volume per pod
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if job.spec.devices.type == "npu" and settings.npu_runtime_class:
        pod_spec["runtimeClassName"] = settings.npu_runtime_class
    pod_metadata: dict[str, Any] = {"labels": {**labels(name), LABEL_ATTEMPT: str(attempt)}}
    pod_overlay.apply(overlay, pod_metadata, pod_spec, container)
    place_ranks(job, attempt, pod_spec)
    gang.mark_pods(job, names.pod_group(attempt), settings, pod_metadata, pod_spec)
    metadata = _metadata(names.job(attempt), name, namespace, **{LABEL_ATTEMPT: str(attempt)})
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": world_size,
        "parallelism": world_size,
        "backoffLimit": 0,
        "podFailurePolicy": pod_failure_policy(),
        "activeDeadlineSeconds": job.spec.activeDeadlineSeconds,
        "template": {"metadata": pod_metadata, "spec": pod_spec},
    }
    if job.spec.queueName:
        metadata["labels"][KUEUE_QUEUE_LABEL] = job.spec.queueName
        job_spec["suspend"] = True  # Kueue admits (unsuspends) it when the queue has room
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def build_attempt_pod_group(job: QuantJob, resolution: Resolution, settings: Settings, namespace: str | None,
                            attempt: int = 1) -> Manifest | None:
    """Attempt ``attempt``'s PodGroup, named and labelled as its child (None without gang scheduling)."""
    name = job.metadata["name"]
    group = ChildNames(name).pod_group(attempt)
    return gang.build_scheduler_pod_group(job, resolution.world_size, settings,
                                          _metadata(group, name, namespace, **{LABEL_ATTEMPT: str(attempt)}))


def build_setup(job: QuantJob, resolution: Resolution, settings: Settings,
                namespace: str | None = None) -> list[Manifest]:
    """The children every attempt shares, in creation order (access and config before any Job)."""
    namespace = namespace or job.metadata.get("namespace")
    children = [*build_worker_access(job, settings, namespace), build_config_map(job, resolution, namespace)]
    if settings.progress_reporting:
        children.append(build_progress_config_map(job, namespace))
    children.append(build_service(job, settings, namespace))
    if settings.network_policy:
        children.append(build_network_policy(job, namespace))
    return children


def build_attempt(job: QuantJob, resolution: Resolution, settings: Settings, namespace: str | None = None,
                  attempt: int = 1) -> list[Manifest]:
    """An attempt's own children: its PodGroup (with gang scheduling), then its Job."""
    namespace = namespace or job.metadata.get("namespace")
    group = build_attempt_pod_group(job, resolution, settings, namespace, attempt)
    return [*([group] if group else []), build_job(job, resolution, settings, namespace, attempt)]


def build_children(job: QuantJob, resolution: Resolution, settings: Settings, namespace: str | None = None,
                   attempt: int = 1) -> list[Manifest]:
    """All children of one attempt, in creation order (what ``quantjob render`` prints)."""
    return [*build_setup(job, resolution, settings, namespace), *build_attempt(job, resolution, settings,
                                                                               namespace, attempt)]
