"""Pydantic models of msModelSlim's ``modelslim_v1`` quantization config, as users write it.

Top level is lenient (``metadata`` is free-form, other top-level keys exist to hold YAML
anchors); everything inside ``spec`` is strict: an unknown key is an error, so a typo
cannot pass silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quantjob.api import catalogue

ActScope = Literal["per_tensor", "per_token", "pd_mix"]
WeightScope = Literal["per_channel", "per_group", "per_tensor"]
QuantDtype = Literal["int8", "int4"]
SubgraphType = Literal["norm-linear", "linear-linear", "ov", "up-down"]
RunnerName = Literal["auto", "layer_wise", "dp_layer_wise"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class QuantSpec(Strict):
    """One side (``act`` or ``weight``) of a qconfig."""

    scope: str
    dtype: QuantDtype = "int8"
    symmetric: bool = True
    method: str = "minmax"
    ext: dict[str, Any] = Field(default_factory=dict)

    @property
    def group_size(self) -> int | None:
        value = self.ext.get("group_size")
        return int(value) if value is not None else None

    @property
    def bits(self) -> int:
        return 4 if self.dtype == "int4" else 8


class ActQuantSpec(QuantSpec):
    scope: ActScope = "per_tensor"  # type: ignore[assignment]


class WeightQuantSpec(QuantSpec):
    scope: WeightScope = "per_channel"  # type: ignore[assignment]


class QConfig(Strict):
    """``act`` absent means weight-only quantization (W8A16, W4A16)."""

    act: ActQuantSpec | None = None
    weight: WeightQuantSpec


class LinearQuant(Strict):
    type: Literal["linear_quant"] = "linear_quant"
    qconfig: QConfig
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)


class Group(Strict):
    type: Literal["group"] = "group"
    configs: list[LinearQuant] = Field(min_length=1)


class IterSmooth(Strict):
    type: Literal["iter_smooth"] = "iter_smooth"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    scale_min: float = Field(1e-5, gt=0.0)
    symmetric: bool = True
    enable_subgraph_type: list[SubgraphType] = Field(
        default_factory=lambda: ["norm-linear", "linear-linear", "ov", "up-down"])
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)


class FlexSmoothQuant(Strict):
    type: Literal["flex_smooth_quant", "flex_smooth"] = "flex_smooth_quant"
    alpha: float | None = Field(None, ge=0.0, le=1.0)
    beta: float | None = Field(None, ge=0.0, le=1.0)
    enable_subgraph_type: list[SubgraphType] = Field(
        default_factory=lambda: ["norm-linear", "linear-linear", "ov", "up-down"])
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)


Processor = Annotated[Union[LinearQuant, Group, IterSmooth, FlexSmoothQuant], Field(discriminator="type")]


class Saver(Strict):
    type: str = "ascendv1_saver"
    part_file_size: float | None = Field(None, gt=0, description="GB per weight file; None = one file")

    @field_validator("type")
    @classmethod
    def _known_saver(cls, value: str) -> str:
        entry = catalogue.lookup("saver", value)
        if entry is None:
            raise ValueError(f"unknown saver {value!r}; supported: {', '.join(catalogue.supported('saver'))}")
        return value


class Spec(Strict):
    runner: RunnerName = "auto"
    process: list[Processor] = Field(min_length=1)
    save: list[Saver] = Field(default_factory=lambda: [Saver()])

    @model_validator(mode="before")
    @classmethod
    def _known_processors(cls, data: Any) -> Any:
        """Turn processor names msModelSlim has but quantjob lacks into a clear error.

        Raised as a ValueError on ``process``; ``quantjob.api.problems`` keeps the item index.
        """
        if isinstance(data, dict) and isinstance(data.get("process"), list):
            for index, item in enumerate(data["process"]):
                if not isinstance(item, dict) or "type" not in item:
                    continue
                entry = catalogue.lookup("processor", str(item["type"]))
                if entry is None:
                    raise ValueError(
                        f"process[{index}].type: unknown processor {item['type']!r}; "
                        f"supported: {', '.join(catalogue.supported('processor'))}")
                if not entry.implemented:
                    raise ValueError(
                        f"process[{index}].type: {item['type']!r} is a known msModelSlim processor, "
                        f"not supported yet by quantjob; supported: "
                        f"{', '.join(catalogue.supported('processor'))}")
        return data


class Label(BaseModel):
    model_config = ConfigDict(extra="allow")
    w_bit: int | None = None
    a_bit: int | None = None
    is_sparse: bool | None = None
    kv_cache: bool | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    config_id: str | None = None
    score: float | None = None
    verified_model_types: list[str] = Field(default_factory=list)
    label: Label | None = None


class ModelslimConfig(BaseModel):
    """A whole ``modelslim_v1`` YAML document. Extra top-level keys (anchor holders) are kept."""

    model_config = ConfigDict(extra="allow")
    apiversion: Literal["modelslim_v1"] = "modelslim_v1"
    metadata: Metadata = Field(default_factory=Metadata)
    spec: Spec
    dataset: str | None = None

    def linear_quants(self) -> list[tuple[str, LinearQuant]]:
        """Every linear_quant entry with its field path, ``group`` entries flattened."""
        found: list[tuple[str, LinearQuant]] = []
        for index, proc in enumerate(self.spec.process):
            if isinstance(proc, LinearQuant):
                found.append((f"spec.process[{index}]", proc))
            elif isinstance(proc, Group):
                found.extend((f"spec.process[{index}].configs[{j}]", lq) for j, lq in enumerate(proc.configs))
        return found
