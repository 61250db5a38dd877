"""Pydantic models of the ``QuantJob`` custom resource (group ``quantjob.io``, version ``v1alpha1``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, create_model, field_validator, model_validator

from quantjob.api import kube_rules
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.nulls import NullsAsDefaults
from quantjob.api.pod_layout import (
    NAME_MAX,
    OWN_MOUNT_PATHS,
    OWN_VOLUMES,
    PATH_MAX,
    canonical,
    code_env,
    long_component,
    mount_path_problem,
    overlaps,
    reserved_env,
)
from quantjob.api.pod_objects import VOLUME_SOURCES, Affinity, first_problem
from quantjob.api.presets import QUANT_TYPES
from quantjob.api.problems import field_error
from quantjob.api.run_options import spec_fields

GROUP = "quantjob.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "QuantJob"
PLURAL = "quantjobs"
SINGULAR = "quantjob"
SHORT_NAMES = ["qj"]

DeviceType = Literal["npu", "cuda", "cpu"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed"]

DEFAULT_RESOURCE_NAMES: dict[str, str | None] = {
    "npu": "huawei.com/Ascend910",
    "cuda": "nvidia.com/gpu",
    "cpu": None,
}


class CamelModel(NullsAsDefaults):
    """The QuantJob's own objects. Strict: a value of the wrong JSON type (``count: "4"``,
    ``overwrite: "true"``) is refused, as the API server refuses it against the CRD schema, so
    ``quantjob validate`` and the cluster agree; an integral float counts as an integer there too.
    (``spec.config`` is msModelSlim's model, not this.)"""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        """``3.0`` for an integer field is an integer to the API server (it sends the webhook ``3``)."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {key: int(value) if isinstance(value, float) and value.is_integer() and key in fields
                and fields[key].annotation is int else value for key, value in data.items()}


# A PersistentVolumeClaim name: a DNS-1123 subdomain.
PVC_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
PvcName = Annotated[str, Field(min_length=1, max_length=253, pattern=PVC_NAME_PATTERN)]


def check_relative_path(value: str) -> str:
    """A path inside a volume: relative, no ``..`` segment, not empty.

    The worker runs on Linux and no shell sees the path: ``a:b/x`` and ``~backup/x`` are ordinary
    relative paths there.
    """
    if not value or not value.strip():
        raise ValueError("path must not be empty; use '.' for the root of the volume")
    if "\x00" in value:
        raise ValueError(f"path {value!r} contains a NUL character; remove it")
    if value.startswith(("/", "\\")):
        raise ValueError(f"path {value!r} must be relative to its volume (remove the leading '{value[0]}')")
    parts = value.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError(f"path {value!r} must stay inside its volume (remove '..')")
    expansion = kubelet_expansion(value)
    if expansion:
        raise ValueError(expansion)
    part = long_component(value)
    if part is not None:
        raise ValueError(f"path component {part[:40]!r}... is {len(part.encode('utf-8', 'surrogatepass'))} bytes; "
                         f"a file name is at most {NAME_MAX} bytes")
    if len(value.encode("utf-8", "surrogatepass")) > PATH_MAX - 64:
        raise ValueError(f"path is longer than {PATH_MAX - 64} bytes; the pod's paths are at most {PATH_MAX}")
    return value


def kubelet_expansion(value: str) -> str | None:
    """Why ``value`` may not reach a container's args, env or mounts: the kubelet replaces ``$(NAME)``
    there with the container's variable ``NAME`` (and ``$$(`` with ``$(``), so the pod would see
    another string than the one checked here (a relative path could become ``../../x``)."""
    if "$(" in value:
        return (f"{value[:80]!r} contains '$(': the kubelet expands $(NAME) from the pod's environment, so the "
                "pod would not use the value checked here; remove '$('")
    return None


class VolumePath(CamelModel):
    pvc: PvcName = Field(description="PersistentVolumeClaim holding the files")
    path: str = Field(description="path inside the volume (relative, no '..')")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return check_relative_path(value)


class ModelSource(VolumePath):
    trustRemoteCode: bool = False
    modelType: str | None = Field(None, description="override the architecture read from config.json")

    @field_validator("modelType")
    @classmethod
    def _literal(cls, value: str | None) -> str | None:
        expansion = None if value is None else kubelet_expansion(value)
        if expansion:
            raise ValueError(expansion)
        return value


class OutputTarget(VolumePath):
    overwrite: bool = Field(False, description="replace a complete output already at this path")


class Devices(CamelModel):
    type: DeviceType = "npu"
    count: int = Field(1, ge=1, le=4096, description="world size: one pod per device")
    resourceName: str | None = Field(None, description="extended resource; defaults by type")
    perNode: int | None = Field(None, ge=1, le=64, description="exactly this many ranks on every node (CANN wants the "
                                                               "same device count on each server of a group: 1, 2, 4 "
                                                               "or 8 on Atlas 910); count must be a multiple. Unset: "
                                                               "ranks are packed onto as few nodes as the scheduler "
                                                               "finds")

    @model_validator(mode="after")
    def _whole_nodes(self) -> Devices:
        if self.perNode is not None and self.count % self.perNode:
            below = self.count - self.count % self.perNode
            raise ValueError(f"count {self.count} is not a multiple of perNode {self.perNode} (every node runs "
                             f"exactly perNode ranks); use count {below or self.perNode} or "
                             f"{below + self.perNode}, or another perNode")
        return self

    @field_validator("resourceName")
    @classmethod
    def _extended(cls, value: str | None) -> str | None:
        if value is not None:
            error = kube_rules.extended_resource_name(value)
            if error:
                raise ValueError(error)
        return value

    def effective_resource_name(self) -> str | None:
        return self.resourceName or DEFAULT_RESOURCE_NAMES[self.type]


class Calibration(CamelModel):
    pvc: PvcName | None = Field(None, description="volume of the calibration file; defaults to the model's")
    path: str | None = Field(None, description="jsonl or text file; None = the built-in calibration set")
    samples: int = Field(128, ge=1, le=1_000_000)
    maxLength: int = Field(2048, ge=8, le=1_048_576)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        return None if value is None else check_relative_path(value)


def _quantity(value: Any) -> Any:
    """Kubernetes quantities may be written as numbers (``cpu: 4``); keep them as strings."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Quantity = Annotated[str | int, Field(description="a Kubernetes quantity, e.g. 4, 500m, 64Gi")]


class ResourceRequirements(CamelModel):
    """Per-pod requests and limits; the device resource is added from ``devices``."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _as_strings(cls, value: dict[str, Any]) -> dict[str, str]:
        return {key: _quantity(item) for key, item in value.items()}

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> ResourceRequirements:
        """What the API server checks on a container's resources, so a Job create is never refused."""
        for side, values in (("requests", self.requests), ("limits", self.limits)):
            for key, raw in values.items():
                error = kube_rules.resource_name(key)
                if error:
                    raise field_error(f"{side}.{key}", error)
                amount = kube_rules.parse_quantity(str(raw))
                if amount is None:
                    raise field_error(f"{side}.{key}", kube_rules.quantity(str(raw)) or "")
                if amount < 0:
                    raise field_error(f"{side}.{key}", f"{raw!r} is negative; resources are zero or more")
                if kube_rules.is_extended_resource(key) and amount != amount.to_integral_value():
                    raise field_error(f"{side}.{key}", f"{key} is counted in whole units; {raw!r} is fractional")
        for key in set(self.requests) & set(self.limits):
            request = kube_rules.parse_quantity(str(self.requests[key]))
            limit = kube_rules.parse_quantity(str(self.limits[key]))
            assert request is not None and limit is not None
            if kube_rules.is_extended_resource(key) and request != limit:
                raise field_error(f"requests.{key}", f"an extended resource's request must equal its limit "
                                                     f"({self.requests[key]} != {self.limits[key]}); set only the limit")
            if request > limit:
                raise field_error(f"requests.{key}", f"request {self.requests[key]} exceeds the limit "
                                                     f"{self.limits[key]}; raise the limit or lower the request")
        return self


class Toleration(CamelModel):
    """A pod toleration (the ``core/v1`` Toleration fields)."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Toleration:
        if self.key:
            error = kube_rules.qualified_name(self.key)
            if error:
                raise field_error("key", error)
        elif self.operator != "Exists":
            raise field_error("operator", "a toleration without key must use operator Exists (it tolerates "
                                          "every taint); add a key or set operator: Exists")
        if self.operator == "Exists" and self.value:
            raise field_error("value", "operator Exists takes no value; remove value or use operator Equal")
        if self.value:
            error = kube_rules.label_value(self.value)
            if error:
                raise field_error("value", error)
        if self.tolerationSeconds is not None and self.effect != "NoExecute":
            raise field_error("tolerationSeconds", "tolerationSeconds only applies to effect NoExecute")
        if self.tolerationSeconds is not None and kube_rules.int64(self.tolerationSeconds):
            raise field_error("tolerationSeconds", kube_rules.int64(self.tolerationSeconds) or "")
        return self


class VolumeMount(CamelModel):
    name: str = Field(description="one of spec.pod.volumes")
    mountPath: str = Field(description="canonical absolute path under /mnt, /data or /srv, outside the worker's own "
                                       "mounts (in the operator's pod defaults: anywhere)")
    readOnly: bool = False
    subPath: str | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> VolumeMount:
        if not self.mountPath.startswith("/") or ":" in self.mountPath:
            raise field_error("mountPath", f"{self.mountPath!r} must be an absolute path without ':'")
        for own in OWN_MOUNT_PATHS:
            if overlaps(self.mountPath, own):
                raise field_error("mountPath", f"{self.mountPath!r} overlaps the worker's own mount {own}; "
                                               "choose another path")
        if self.subPath is not None and (self.subPath.startswith("/") or ".." in self.subPath.split("/")
                                         or "\x00" in self.subPath or long_component(self.subPath)):
            raise field_error("subPath", f"{self.subPath[:80]!r} must be relative, stay inside the volume and "
                                         "have components of at most 255 bytes")
        for field in ("mountPath", "subPath"):
            expansion = kubelet_expansion(getattr(self, field) or "")
            if expansion:
                raise field_error(field, expansion)
        return self


_RESERVED_LABEL_PREFIXES = ("quantjob.io/", "app.kubernetes.io/", "batch.kubernetes.io/", "scheduling.x-k8s.io/",
                            "scheduling.k8s.io/", "kueue.x-k8s.io/")
_RESERVED_LABELS = ("job-name", "controller-uid")

# Pod annotations the kubelet or the container runtime reads to confine (or not) a container. The
# operator sets the restricted profile's seccomp and AppArmor choices itself; a QuantJob may ask for
# a confinement at least as strict (RuntimeDefault, or a profile installed on the node), never less.
_APPARMOR_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
_SECCOMP_KEYS = ("seccomp.security.alpha.kubernetes.io/pod",)
_SECCOMP_PREFIX = "container.seccomp.security.alpha.kubernetes.io/"
# Runtimes that read pod annotations as container settings (CRI-O's allowed_annotations: devices,
# user namespaces, cgroups; Kata's hypervisor options): never a user's to set.
_RUNTIME_ANNOTATION_PREFIXES = ("io.kubernetes.cri-o.", "io.katacontainers.", "io.containerd.", "io.kubernetes.cri.")


def confinement_problem(key: str, value: str) -> str | None:
    """Why pod annotation ``key: value`` would loosen the pod's confinement, or None."""
    if key.startswith(_APPARMOR_PREFIX):
        if value == "runtime/default" or (value.startswith("localhost/") and len(value) > len("localhost/")):
            return None
        return (f"AppArmor profile {value[:60]!r} loosens the pod's confinement; use runtime/default or "
                "localhost/<profile>, or remove the annotation")
    if key in _SECCOMP_KEYS or key.startswith(_SECCOMP_PREFIX):
        if value == "runtime/default":
            return None
        return (f"seccomp profile {value[:60]!r}: the operator runs every pod under RuntimeDefault (the "
                "restricted profile) and the API server refuses a pod whose annotation disagrees; remove it")
    if key.startswith(_RUNTIME_ANNOTATION_PREFIXES):
        return "the container runtime reads this annotation as a container setting; remove it"
    return None


def _check_labels(labels: dict[str, str], where: str, *, values: bool) -> None:
    for key, value in labels.items():
        error = kube_rules.qualified_name(key) or (kube_rules.label_value(value) if values else None)
        if error:
            raise field_error(f"{where}.{key}", error)


class PodOverlay(CamelModel):
    """Additions to every worker pod: scheduling, metadata, groups, volumes.

    In a QuantJob (``spec.pod``) volumes are limited to the kinds the Pod Security "restricted"
    profile allows (no hostPath); host paths such as the Ascend driver belong in the operator's
    pod defaults, which the cluster administrator writes.
    """

    ALLOWED_VOLUME_SOURCES: ClassVar[tuple[str, ...]] = (
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret")

    schedulerName: str | None = Field(None, description="e.g. volcano, hami-scheduler")
    priorityClassName: str | None = None
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = Field(None, description="a core/v1 Affinity")
    labels: dict[str, str] = Field(default_factory=dict, description="extra pod labels")
    annotations: dict[str, str] = Field(default_factory=dict, description="extra pod annotations")
    supplementalGroups: list[int] = Field(default_factory=list, description="e.g. the driver's HwHiAiUser gid")
    volumes: list[dict[str, Any]] = Field(default_factory=list, description="core/v1 Volumes")
    volumeMounts: list[VolumeMount] = Field(default_factory=list, description="mounts of those volumes")

    # QuantJob volumes may only be mounted under USER_MOUNT_ROOTS and nothing may loosen the pod's
    # confinement; the operator's pod defaults (the administrator's) are not held to that.
    CONFINED: ClassVar[bool] = True

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> PodOverlay:
        for field in ("schedulerName", "priorityClassName"):
            value = getattr(self, field)
            if value is not None:
                error = kube_rules.dns1123_subdomain(value)
                if error:
                    raise field_error(field, error)
        _check_labels(self.nodeSelector, "nodeSelector", values=True)
        _check_labels(self.labels, "labels", values=True)
        _check_labels(self.annotations, "annotations", values=False)
        size = sum(len(key.encode()) + len(value.encode("utf-8", "surrogatepass"))
                   for key, value in self.annotations.items())
        if size > kube_rules.ANNOTATIONS_MAX_BYTES:
            raise field_error("annotations", f"the annotations hold {size} bytes; the API server allows "
                                             f"{kube_rules.ANNOTATIONS_MAX_BYTES} per object")
        for key in self.labels:
            if key.startswith(_RESERVED_LABEL_PREFIXES) or key in _RESERVED_LABELS:
                raise field_error(f"labels.{key}", f"{key!r} is set by the operator or the Job controller; "
                                                   "use another key")
        if self.affinity is not None:
            unknown = sorted(set(self.affinity) - {"nodeAffinity", "podAffinity", "podAntiAffinity"})
            if unknown:
                raise field_error(f"affinity.{unknown[0]}", "affinity holds nodeAffinity, podAffinity and "
                                                            "podAntiAffinity only")
            found = first_problem(Affinity, self.affinity, "affinity")
            if found is not None:
                raise field_error(found.path, found.message)
        if self.CONFINED:
            for key, value in self.annotations.items():
                problem = confinement_problem(key, value)
                if problem:
                    raise field_error(f"annotations.{key}", problem)
            for index, mount in enumerate(self.volumeMounts):
                problem = mount_path_problem(mount.mountPath)
                if problem:
                    raise field_error(f"volumeMounts[{index}].mountPath", problem)
        for index, gid in enumerate(self.supplementalGroups):
            error = kube_rules.group_id(gid)
            if error:
                raise field_error(f"supplementalGroups[{index}]", error)
        names: list[str] = []
        for index, volume in enumerate(self.volumes):
            names.append(self._check_volume(index, volume))
        if len(set(names)) != len(names):
            raise field_error("volumes", "volume names must be unique")
        for index, mount in enumerate(self.volumeMounts):
            if mount.name not in names:
                raise field_error(f"volumeMounts[{index}].name", f"no volume named {mount.name!r} in volumes")
        for index, mount in enumerate(self.volumeMounts):  # nesting one's own volumes is fine, sharing a path not
            for other in self.volumeMounts[:index]:
                if canonical(mount.mountPath) == canonical(other.mountPath):
                    raise field_error(f"volumeMounts[{index}].mountPath",
                                      f"{mount.mountPath!r} is another mount's path ({other.mountPath!r}); give each "
                                      "volume its own directory")
        return self

    def _check_volume(self, index: int, volume: dict[str, Any]) -> str:
        name = volume.get("name")
        if not isinstance(name, str):
            raise field_error(f"volumes[{index}].name", "every volume needs a name")
        error = kube_rules.dns1123_label(name)
        if error:
            raise field_error(f"volumes[{index}].name", error)
        if name in OWN_VOLUMES:
            raise field_error(f"volumes[{index}].name", f"{name!r} is one of the worker's own volumes; rename it")
        sources = [key for key in volume if key != "name"]
        if len(sources) != 1:
            raise field_error(f"volumes[{index}]", "a volume has a name and exactly one source "
                                                   f"(one of {', '.join(self.ALLOWED_VOLUME_SOURCES)})")
        if sources[0] not in self.ALLOWED_VOLUME_SOURCES:
            raise field_error(f"volumes[{index}].{sources[0]}",
                              f"{sources[0]} volumes are not allowed here; use one of "
                              f"{', '.join(self.ALLOWED_VOLUME_SOURCES)} (host paths belong in the operator's "
                              "pod defaults)")
        if not isinstance(volume[sources[0]], dict):
            raise field_error(f"volumes[{index}].{sources[0]}", "must be a mapping")
        found = first_problem(VOLUME_SOURCES[sources[0]], volume[sources[0]], f"volumes[{index}].{sources[0]}")
        if found is not None:
            raise field_error(found.path, found.message)
        return name


GangScheduler = Literal["none", "volcano", "coscheduling"]


class Scheduling(CamelModel):
    """Gang scheduling: all ranks placed at once or none (a partial group would hold devices)."""

    gang: GangScheduler | None = Field(None, description="none, volcano or coscheduling; default: the operator's")
    queue: str | None = Field(None, description="Volcano queue of the PodGroup")

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        if value is not None:
            error = kube_rules.dns1123_subdomain(value)
            if error:
                raise ValueError(error)
        return value

    @model_validator(mode="after")
    def _queue_needs_volcano(self) -> Scheduling:
        if self.queue is not None and self.gang != "volcano":
            raise field_error("queue", "a Volcano queue needs gang: volcano (set it here); for Kueue use "
                                       "spec.queueName")
        return self


class QuantJobSpecFields(CamelModel):
    """``QuantJobSpec`` less the top-level run options (added from ``quantjob.api.run_options``)."""

    model: ModelSource
    output: OutputTarget
    devices: Devices = Field(default_factory=Devices)
    image: str | None = Field(None, description="worker image; defaults to the operator's setting")
    calibration: Calibration = Field(default_factory=Calibration)
    quantType: str | None = Field(None, description=f"preset instead of config: {', '.join(QUANT_TYPES)}")
    config: ModelslimConfig | None = Field(None, description="a modelslim_v1 config, verbatim")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    queueName: str | None = Field(None, description="Kueue LocalQueue; the Job starts suspended")
    scheduling: Scheduling = Field(default_factory=Scheduling)
    pod: PodOverlay = Field(default_factory=PodOverlay, description="additions to every worker pod")
    shmSize: Quantity = Field("1Gi", description="size limit of the memory-backed /dev/shm")
    maxRestarts: int = Field(3, ge=0, le=100, description="restarts of the whole group after a rank fails; "
                                                          "each attempt resumes at the last committed layer")
    maxDisruptions: int = Field(10, ge=0, le=1000, description="restarts after preemption, eviction or a node "
                                                               "drain; not counted in maxRestarts")
    activeDeadlineSeconds: int = Field(86_400, ge=60, description="each attempt's Job is stopped after this long")
    startupTimeoutSeconds: int = Field(1_800, ge=30, description="fail when not every rank runs within this "
                                                                 "long of an attempt's start (queue time excluded)")
    rendezvousTimeoutSeconds: int = Field(600, ge=10, le=7_200, description="how long ranks wait for rank 0 "
                                                                            "and for each other (HCCL_CONNECT_TIMEOUT)")
    collectiveTimeoutSeconds: int = Field(1_800, ge=60, le=17_340, description="a collective that takes longer "
                                                                                "fails the attempt (HCCL_EXEC_TIMEOUT)")
    env: dict[str, str] = Field(default_factory=dict, description="extra worker environment, e.g. HCCL_SOCKET_IFNAME")
    # the run options the table generates (nextLayerInput, calibrateAllExperts, ...) follow these:
    # quantjob.api.run_options.spec_fields

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "backoffLimit" in data:
            raise field_error("backoffLimit", "replaced by maxRestarts (a failed rank restarts the whole group, "
                                              "which resumes at the last committed layer); rename the field")
        return data

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None:
            error = kube_rules.image_reference(value)
            if error:
                raise ValueError(error)
        return value

    @field_validator("queueName")
    @classmethod
    def _queue_label(cls, value: str | None) -> str | None:
        if value is not None:
            error = kube_rules.label_value(value) if value else "queueName must not be empty; remove it instead"
            if error:
                raise ValueError(f"{error} (it becomes the label kueue.x-k8s.io/queue-name)")
        return value

    @field_validator("shmSize", mode="before")
    @classmethod
    def _shm(cls, value: Any) -> Any:
        value = _quantity(value)
        if isinstance(value, str):
            amount = kube_rules.parse_quantity(value)
            if amount is None:
                raise ValueError(kube_rules.quantity(value))
            if amount <= 0:
                raise ValueError(f"shmSize {value!r} must be positive")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            error = kube_rules.env_name(name)
            if error:
                raise field_error(name, error)
            if code_env(name):
                raise field_error(name, f"{name} can make the pod's entry point, shell, loader, Python or CANN "
                                        "run other code, so no QuantJob may set it (PATH, ENV, BASH_ENV, LD_*, "
                                        "PYTHON*, ASCEND_HOME and *_PATH, *_HOME, *_PLUGIN variables are "
                                        "reserved); ask the operator's administrator for pod defaults instead")
            if reserved_env(name):
                raise field_error(name, f"{name} is set by the operator or read by the worker and cannot be "
                                        "set in spec.env (QUANTJOB_*, KUBERNETES_*, the group's rendezvous, "
                                        "device selection and offline variables are reserved)")
        for name, item in value.items():
            expansion = kubelet_expansion(item)
            if expansion:
                raise field_error(name, expansion)
        return value

    @field_validator("quantType")
    @classmethod
    def _known_quant_type(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in QUANT_TYPES:
            raise ValueError(f"unknown quantType {value!r}; choose one of: {', '.join(QUANT_TYPES)}")
        return value

    @model_validator(mode="after")
    def _one_config_source(self) -> QuantJobSpecFields:
        if self.config is not None and self.quantType is not None:
            raise field_error("quantType", "quantType and config are mutually exclusive; keep one of them")
        if self.config is None and self.quantType is None:
            raise field_error("quantType", "set either quantType (a preset: "
                                           f"{', '.join(QUANT_TYPES)}) or config (a modelslim_v1 config)")
        return self

    def resolved_config(self) -> ModelslimConfig:
        """The config the worker runs: ``config`` itself, or the expanded ``quantType`` preset."""
        from quantjob.api.presets import preset

        return self.config if self.config is not None else preset(self.quantType or "")


class Condition(CamelModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None


class Progress(CamelModel):
    layersDone: int = Field(0, ge=0)
    layersTotal: int = Field(0, ge=0)
    currentLayer: int | None = None
    lastLayerError: float | None = None
    summary: str | None = Field(None, description="layersDone/layersTotal, e.g. 3/16 (printer column)")
    attempt: int | None = Field(None, description="the attempt that reported it")
    secondsPerLayer: float | None = Field(None, ge=0, description="the reporting attempt's mean seconds per layer "
                                                                  "(layers it resumed past excluded)")
    etaSeconds: int | None = Field(None, ge=0, description="secondsPerLayer times the layers left")
    eta: str | None = Field(None, description="etaSeconds as text, e.g. 3h07m (printer column)")

    @model_validator(mode="after")
    def _summarise(self) -> Progress:
        if self.summary is None and self.layersTotal:
            self.summary = f"{self.layersDone}/{self.layersTotal}"
        return self


class Attempt(CamelModel):
    """One run of the whole group: its Job, where it resumed, how it ended."""

    attempt: int = Field(ge=1)
    job: str
    resumedFromLayer: int | None = Field(None, description="committed layers found at the start (worker)")
    startTime: str | None = Field(None, description="when the operator created the attempt's Job")
    readyTime: str | None = Field(None, description="when every rank first ran")
    completionTime: str | None = None
    outcome: str | None = Field(None, description="Succeeded, Failed, Disrupted, UserError, DeadlineExceeded, "
                                                  "StartupTimeout")
    message: str | None = None
    jobCreated: bool | None = Field(None, description="the attempt's Job was created; if it vanishes the attempt "
                                                      "ends and the next one gets a new name")
    endedTime: str | None = Field(None, description="when the operator saw the attempt end (start of the bound "
                                                    "on pods stuck terminating)")


class QuantJobStatus(CamelModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)  # kopf keeps its own keys here
    observedGeneration: int | None = None
    phase: Phase | None = None
    reason: str | None = Field(None, description="why the phase, e.g. Unschedulable, RuntimeClassNotFound")
    message: str | None = None
    runner: str | None = None
    worldSize: int | None = None
    job: str | None = Field(None, description="the current attempt's Job")
    attempt: int | None = None
    restarts: int | None = Field(None, description="group restarts so far (failures and disruptions)")
    restartsCountTowardsMax: int | None = Field(None, description="restarts after failures (limit maxRestarts)")
    disruptions: int | None = Field(None, description="restarts after preemption or eviction (maxDisruptions)")
    ready: int | None = Field(None, description="ranks of the current attempt running and ready")
    readySummary: str | None = Field(None, description="ready/worldSize (printer column)")
    attempts: list[Attempt] = Field(default_factory=list, description="the latest attempts (at most 10); "
                                                                       "status.attempt counts them all")
    attemptsOmitted: int | None = Field(None, description="older attempts dropped from status.attempts")
    warnings: list[str] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    startTime: str | None = None
    completionTime: str | None = None
    progress: Progress | None = None


if TYPE_CHECKING:  # checkers see the declared fields; the run options are read through the table
    QuantJobSpec = QuantJobSpecFields
else:
    QuantJobSpec = create_model("QuantJobSpec", __base__=QuantJobSpecFields, __module__=__name__,
                                **spec_fields())


class QuantJob(CamelModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    apiVersion: Literal["quantjob.io/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["QuantJob"] = KIND  # type: ignore[assignment]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: QuantJobSpec
    status: QuantJobStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _object_meta(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The ObjectMeta fields the API server types (and the operator reads): a wrong type here is
        refused by the API server before any webhook, so ``validate`` refuses it too."""
        for field in ("name", "generateName", "namespace"):
            if field in value and not isinstance(value[field], str):
                raise field_error(field, f"must be a string, not {type(value[field]).__name__}")
        namespace = value.get("namespace")
        if namespace:
            error = kube_rules.dns1123_label(namespace)
            if error:
                raise field_error("namespace", error)
        for field in ("labels", "annotations"):
            items = value.get(field)
            if items is not None and (not isinstance(items, dict)
                                      or not all(isinstance(item, str) for item in items.values())):
                raise field_error(field, "must be a map of strings to strings")
        return value
