"""Pydantic models of the ``QuantJob`` custom resource (group ``quantjob.io``, version ``v1alpha1``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.presets import QUANT_TYPES

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


class CamelModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def check_relative_path(value: str) -> str:
    """A path inside a volume: relative, no ``..`` segment, not empty."""
    if not value or not value.strip():
        raise ValueError("path must not be empty")
    if value.startswith("/") or value.startswith("\\") or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"path {value!r} must be relative to its volume (remove the leading '/')")
    parts = value.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError(f"path {value!r} must stay inside its volume (remove '..')")
    return value


class VolumePath(CamelModel):
    pvc: str = Field(min_length=1, description="PersistentVolumeClaim holding the files")
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
    pvc: str | None = Field(None, description="volume of the calibration file; defaults to the model's")
    path: str | None = Field(None, description="jsonl or text file; None = the built-in calibration set")
    samples: int = Field(128, ge=1, le=1_000_000)
    maxLength: int = Field(2048, ge=8, le=1_048_576)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        return None if value is None else check_relative_path(value)


class ResourceRequirements(CamelModel):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


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
    nextLayerInput: Literal["float", "quantized"] = Field(
        "float", description="inputs of layer i+1: outputs of the float or of the quantized layer i")

    @model_validator(mode="after")
    def _one_config_source(self) -> "QuantJobSpec":
        if self.config is not None and self.quantType is not None:
            raise ValueError("quantType and config are mutually exclusive; keep one of them")
        if self.config is None and self.quantType is None:
            raise ValueError("set either quantType (a preset) or config (a modelslim_v1 config)")
        if self.quantType is not None and self.quantType.lower() not in QUANT_TYPES:
            raise ValueError(f"unknown quantType {self.quantType!r}; choose one of: {', '.join(QUANT_TYPES)}")
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
