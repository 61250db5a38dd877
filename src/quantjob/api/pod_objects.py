"""The Kubernetes objects a QuantJob hands through to its pods verbatim (``spec.pod.volumes`` and
``spec.pod.affinity``), checked as the API server checks them when the operator creates the Job.

The CRD keeps these as free-form objects (``x-kubernetes-preserve-unknown-fields``), so nothing
looks inside them before the Job is created: a wrong field or value would be admitted and then
refused at Job creation, where the user no longer sees it. These models follow the ``core/v1``
types (``Volume`` sources, ``Affinity``) and the rules of ``k8s.io/kubernetes/pkg/apis/core/validation``
that apply to them: required fields, enumerations, ranges, names and relative paths. Fields the
models do not know are refused (``kubectl``'s strict field validation would refuse them as well).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from quantjob.api import kube_rules
from quantjob.api.nulls import NullsAsDefaults
from quantjob.api.problems import Problem, field_error, from_validation_error

MAX_MODE = 0o777
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels", "metadata.annotations")
_FIELD_PATH_KEYED = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
_RESOURCE_FIELDS = ("limits.cpu", "limits.memory", "limits.ephemeral-storage", "requests.cpu", "requests.memory",
                    "requests.ephemeral-storage")


class KubeObject(NullsAsDefaults):
    model_config = ConfigDict(extra="forbid", strict=True)


Mode = Field(None, ge=0, le=MAX_MODE, description="file mode, 0 to 0777")


def _name(value: str, what: str = "name") -> str:
    error = kube_rules.dns1123_subdomain(value)
    if error:
        raise ValueError(f"{what}: {error}")
    return value


def _quantity(value: Any) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise ValueError("a quantity is a string or an integer, e.g. 1Gi")  # noqa: TRY004 (pydantic reports ValueError)
    error = kube_rules.quantity(text)
    if error:
        raise ValueError(error)
    amount = kube_rules.parse_quantity(text)
    if amount is not None and amount < 0:
        raise ValueError(f"{text!r} is negative")
    return text


def relative_file_path(value: str) -> str:
    """A file a volume projects: relative, no ``..`` component, not empty, components within NAME_MAX."""
    if not value or value.startswith("/") or "\x00" in value:
        raise ValueError(f"{value!r} must be a non-empty relative path")
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} must not contain '..'")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in value.split("/")):
        raise ValueError(f"{value[:40]!r}... has a component over 255 bytes")
    return value


class KeyToPath(KubeObject):
    key: str
    path: str
    mode: int | None = Mode

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if len(value) > 253 or not _CONFIG_KEY.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not a ConfigMap/Secret key: letters, digits, '-', '_', '.'")
        return value

    _path = field_validator("path")(classmethod(lambda cls, value: relative_file_path(value)))


class ConfigMapSource(KubeObject):
    name: str
    items: list[KeyToPath] = Field(default_factory=list)
    defaultMode: int | None = Mode
    optional: bool | None = None

    _name = field_validator("name")(classmethod(lambda cls, value: _name(value)))


class SecretSource(KubeObject):
    secretName: str
    items: list[KeyToPath] = Field(default_factory=list)
    defaultMode: int | None = Mode
    optional: bool | None = None

    _name = field_validator("secretName")(classmethod(lambda cls, value: _name(value)))


class ObjectFieldSelector(KubeObject):
    apiVersion: Literal["v1"] | None = None
    fieldPath: str

    @field_validator("fieldPath")
    @classmethod
    def _supported(cls, value: str) -> str:
        keyed = _FIELD_PATH_KEYED.fullmatch(value)
        if value not in _FIELD_PATHS and not (keyed and not kube_rules.qualified_name(keyed[2])):
            raise ValueError(f"{value[:60]!r} is not a field a volume can project; use one of "
                             f"{', '.join(_FIELD_PATHS)}, or metadata.labels['<key>']")
        return value


class ResourceFieldSelector(KubeObject):
    containerName: str | None = None
    resource: str
    divisor: str | int | None = None

    @field_validator("resource")
    @classmethod
    def _supported(cls, value: str) -> str:
        if value not in _RESOURCE_FIELDS and not value.startswith(("limits.hugepages-", "requests.hugepages-")):
            raise ValueError(f"{value[:60]!r} is not a resource a volume can project; use one of "
                             f"{', '.join(_RESOURCE_FIELDS)}")
        return value

    _divisor = field_validator("divisor")(classmethod(lambda cls, value: None if value is None else _quantity(value)))


class DownwardAPIFile(KubeObject):
    path: str
    fieldRef: ObjectFieldSelector | None = None
    resourceFieldRef: ResourceFieldSelector | None = None
    mode: int | None = Mode

    _path = field_validator("path")(classmethod(lambda cls, value: relative_file_path(value)))

    @model_validator(mode="after")
    def _one_source(self) -> DownwardAPIFile:
        if (self.fieldRef is None) == (self.resourceFieldRef is None):
            raise field_error("fieldRef", "give exactly one of fieldRef and resourceFieldRef")
        return self


class DownwardAPISource(KubeObject):
    items: list[DownwardAPIFile] = Field(default_factory=list)
    defaultMode: int | None = Mode


class DownwardAPIProjection(KubeObject):
    items: list[DownwardAPIFile] = Field(default_factory=list)


class ConfigMapProjection(KubeObject):
    name: str
    items: list[KeyToPath] = Field(default_factory=list)
    optional: bool | None = None

    _name = field_validator("name")(classmethod(lambda cls, value: _name(value)))


SecretProjection = ConfigMapProjection


class ServiceAccountTokenProjection(KubeObject):
    audience: str | None = None
    expirationSeconds: int | None = Field(None, ge=600, le=2 ** 32)
    path: str

    _path = field_validator("path")(classmethod(lambda cls, value: relative_file_path(value)))


class VolumeProjection(KubeObject):
    configMap: ConfigMapProjection | None = None
    secret: SecretProjection | None = None
    downwardAPI: DownwardAPIProjection | None = None
    serviceAccountToken: ServiceAccountTokenProjection | None = None

    @model_validator(mode="after")
    def _one(self) -> VolumeProjection:
        if sum(value is not None for value in (self.configMap, self.secret, self.downwardAPI,
                                                self.serviceAccountToken)) != 1:
            raise ValueError("each projected source has exactly one of configMap, secret, downwardAPI, "
                             "serviceAccountToken")
        return self


class ProjectedSource(KubeObject):
    sources: list[VolumeProjection] = Field(default_factory=list)
    defaultMode: int | None = Mode


class EmptyDirSource(KubeObject):
    medium: str | None = None
    sizeLimit: str | int | None = None

    @field_validator("medium")
    @classmethod
    def _medium(cls, value: str | None) -> str | None:
        if value not in (None, "", "Memory", "HugePages") and not (
                value.startswith("HugePages-") and kube_rules.quantity(value[len("HugePages-"):]) is None):
            raise ValueError(f"{value!r} is not a medium: use '' (the node's disk), Memory or HugePages")
        return value

    _size = field_validator("sizeLimit")(classmethod(lambda cls, value: None if value is None else _quantity(value)))


class ClaimSource(KubeObject):
    claimName: str
    readOnly: bool | None = None

    _name = field_validator("claimName")(classmethod(lambda cls, value: _name(value, "claimName")))


class LocalObjectReference(KubeObject):
    name: str

    _name = field_validator("name")(classmethod(lambda cls, value: _name(value)))


class CSISource(KubeObject):
    driver: str
    readOnly: bool | None = None
    fsType: str | None = None
    volumeAttributes: dict[str, str] = Field(default_factory=dict)
    nodePublishSecretRef: LocalObjectReference | None = None

    @field_validator("driver")
    @classmethod
    def _driver(cls, value: str) -> str:
        if len(value) > 63 or kube_rules.dns1123_subdomain(value.lower()):
            raise ValueError(f"{value[:70]!r} is not a CSI driver name: a DNS subdomain of at most 63 characters")
        return value


class ClaimResources(KubeObject):
    requests: dict[str, str | int] = Field(default_factory=dict)
    limits: dict[str, str | int] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, value: dict[str, Any]) -> dict[str, str]:
        return {key: _quantity(item) for key, item in value.items()}


AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]


class ClaimSpec(KubeObject):
    accessModes: list[AccessMode] = Field(min_length=1)
    resources: ClaimResources
    storageClassName: str | None = None
    volumeMode: Literal["Filesystem", "Block"] | None = None
    volumeAttributesClassName: str | None = None

    @model_validator(mode="after")
    def _storage(self) -> ClaimSpec:
        if "storage" not in self.resources.requests:
            raise field_error("resources.requests.storage", "a claim needs a storage request, e.g. 10Gi")
        if self.storageClassName:
            _name(self.storageClassName, "storageClassName")
        return self


class ClaimMetadata(KubeObject):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ClaimTemplate(KubeObject):
    metadata: ClaimMetadata | None = None
    spec: ClaimSpec


class EphemeralSource(KubeObject):
    volumeClaimTemplate: ClaimTemplate


class HostPathSource(KubeObject):
    path: str
    type: Literal["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice",
                  "BlockDevice"] | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"{value!r} must be an absolute path without '..'")
        return value


VOLUME_SOURCES: dict[str, type[KubeObject]] = {
    "configMap": ConfigMapSource, "csi": CSISource, "downwardAPI": DownwardAPISource, "emptyDir": EmptyDirSource,
    "ephemeral": EphemeralSource, "persistentVolumeClaim": ClaimSource, "projected": ProjectedSource,
    "secret": SecretSource, "hostPath": HostPathSource,
}


# --- affinity ---------------------------------------------------------------------------------------

class NodeSelectorRequirement(KubeObject):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values(self) -> NodeSelectorRequirement:
        error = kube_rules.qualified_name(self.key)
        if error:
            raise field_error("key", error)
        if self.operator in ("In", "NotIn") and not self.values:
            raise field_error("values", f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise field_error("values", f"operator {self.operator} takes no values")
        if self.operator in ("Gt", "Lt") and (len(self.values) != 1 or not re.fullmatch(r"-?\d{1,18}",
                                                                                         self.values[0])):
            raise field_error("values", f"operator {self.operator} takes exactly one integer value")
        for index, value in enumerate(self.values):
            error = kube_rules.label_value(value)
            if error:
                raise field_error(f"values[{index}]", error)
        return self


class NodeFieldRequirement(KubeObject):
    key: Literal["metadata.name"]
    operator: Literal["In", "NotIn"]
    values: list[str] = Field(min_length=1, max_length=1)


class NodeSelectorTerm(KubeObject):
    matchExpressions: list[NodeSelectorRequirement] = Field(default_factory=list)
    matchFields: list[NodeFieldRequirement] = Field(default_factory=list)


class NodeSelector(KubeObject):
    nodeSelectorTerms: list[NodeSelectorTerm] = Field(min_length=1)


Weight = Field(ge=1, le=100, description="1 to 100")


class PreferredSchedulingTerm(KubeObject):
    weight: int = Weight
    preference: NodeSelectorTerm


class NodeAffinity(KubeObject):
    requiredDuringSchedulingIgnoredDuringExecution: NodeSelector | None = None
    preferredDuringSchedulingIgnoredDuringExecution: list[PreferredSchedulingTerm] = Field(default_factory=list)


class LabelSelectorRequirement(KubeObject):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirement:
        error = kube_rules.qualified_name(self.key)
        if error:
            raise field_error("key", error)
        if self.operator in ("In", "NotIn") and not self.values:
            raise field_error("values", f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise field_error("values", f"operator {self.operator} takes no values")
        for index, value in enumerate(self.values):
            error = kube_rules.label_value(value)
            if error:
                raise field_error(f"values[{index}]", error)
        return self


class LabelSelector(KubeObject):
    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    @model_validator(mode="after")
    def _labels(self) -> LabelSelector:
        for key, value in self.matchLabels.items():
            error = kube_rules.qualified_name(key) or kube_rules.label_value(value)
            if error:
                raise field_error(f"matchLabels.{key}", error)
        return self


class PodAffinityTerm(KubeObject):
    labelSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    namespaces: list[str] = Field(default_factory=list)
    topologyKey: str
    matchLabelKeys: list[str] = Field(default_factory=list)
    mismatchLabelKeys: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> PodAffinityTerm:
        error = kube_rules.qualified_name(self.topologyKey)
        if error:
            raise field_error("topologyKey", error)
        for index, namespace in enumerate(self.namespaces):
            error = kube_rules.dns1123_label(namespace)
            if error:
                raise field_error(f"namespaces[{index}]", error)
        for field in ("matchLabelKeys", "mismatchLabelKeys"):
            for index, key in enumerate(getattr(self, field)):
                error = kube_rules.qualified_name(key)
                if error:
                    raise field_error(f"{field}[{index}]", error)
        return self


class WeightedPodAffinityTerm(KubeObject):
    weight: int = Weight
    podAffinityTerm: PodAffinityTerm


class PodAffinity(KubeObject):
    requiredDuringSchedulingIgnoredDuringExecution: list[PodAffinityTerm] = Field(default_factory=list)
    preferredDuringSchedulingIgnoredDuringExecution: list[WeightedPodAffinityTerm] = Field(default_factory=list)


class Affinity(KubeObject):
    nodeAffinity: NodeAffinity | None = None
    podAffinity: PodAffinity | None = None
    podAntiAffinity: PodAffinity | None = None


def first_problem(model: type[KubeObject], data: Any, at: str) -> Problem | None:
    """The first thing the API server would refuse in ``data`` as a ``model``, with its path under ``at``."""
    try:
        model.model_validate(data)
    except ValidationError as error:
        return from_validation_error(error, at)[0]
    return None

