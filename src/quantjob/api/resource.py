"""Pydantic models of the ``QuantJob`` custom resource (group ``quantjob.io``, version ``v1alpha1``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.nulls import NullsAsDefaults
from quantjob.api.presets import QUANT_TYPES
from quantjob.api.problems import field_error

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
    return value


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


class OutputTarget(VolumePath):
    overwrite: bool = Field(False, description="replace a complete output already at this path")


class Devices(CamelModel):
    type: DeviceType = "npu"
    count: int = Field(1, ge=1, le=4096, description="world size: one pod per device")
    resourceName: str | None = Field(None, description="extended resource; defaults by type")

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


class QuantJobSpec(CamelModel):
    model: ModelSource
    output: OutputTarget
    devices: Devices = Field(default_factory=Devices)
    image: str | None = Field(None, description="worker image; defaults to the operator's setting")
    calibration: Calibration = Field(default_factory=Calibration)
    quantType: str | None = Field(None, description=f"preset instead of config: {', '.join(QUANT_TYPES)}")
    config: ModelslimConfig | None = Field(None, description="a modelslim_v1 config, verbatim")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    queueName: str | None = Field(None, description="Kueue LocalQueue; the Job starts suspended")
    backoffLimit: int = Field(3, ge=0, le=100)
    env: dict[str, str] = Field(default_factory=dict, description="extra worker environment, e.g. HCCL_SOCKET_IFNAME")
    nextLayerInput: Literal["float", "quantized"] = Field(
        "float", description="inputs of layer i+1: outputs of the float or of the quantized layer i")

    @field_validator("quantType")
    @classmethod
    def _known_quant_type(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in QUANT_TYPES:
            raise ValueError(f"unknown quantType {value!r}; choose one of: {', '.join(QUANT_TYPES)}")
        return value

    @model_validator(mode="after")
    def _one_config_source(self) -> QuantJobSpec:
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

    @model_validator(mode="after")
    def _summarise(self) -> Progress:
        if self.summary is None and self.layersTotal:
            self.summary = f"{self.layersDone}/{self.layersTotal}"
        return self


class QuantJobStatus(CamelModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)  # kopf keeps its own keys here
    phase: Phase | None = None
    runner: str | None = None
    worldSize: int | None = None
    job: str | None = None
    warnings: list[str] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    startTime: str | None = None
    completionTime: str | None = None
    progress: Progress | None = None


class QuantJob(CamelModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    apiVersion: Literal["quantjob.io/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["QuantJob"] = KIND  # type: ignore[assignment]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: QuantJobSpec
    status: QuantJobStatus | None = None
