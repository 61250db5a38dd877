"""Pydantic models of msModelSlim's ``modelslim_v1`` quantization config, as users write it.

Top level is lenient (``metadata`` is free-form, other top-level keys exist to hold YAML
anchors); everything inside ``spec`` is strict: an unknown key is an error, so a typo
cannot pass silently. Processors that msModelSlim has and quantjob does not model parse
as ``OtherProcessor`` (their options kept verbatim); the compatibility check
(``quantjob.api.check``) reports them, together with every other problem of the document.
Field-by-field notes: ``docs/modelslim-fields.md``.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from quantjob.api import catalogue
from quantjob.api.globs import matches, pattern_error
from quantjob.api.nulls import NullsAsDefaults
from quantjob.api.problems import field_error
from quantjob.api.processor_registry import ProcessorConfig, Statistic, processor, processor_union

ActScope = Literal["per_tensor", "per_token", "pd_mix"]
WeightScope = Literal["per_channel", "per_group", "per_tensor"]
QuantDtype = Literal["int8", "int4"]
SubgraphType = Literal["norm-linear", "linear-linear", "ov", "up-down"]
RunnerName = Literal["auto", "layer_wise", "dp_layer_wise", "model_wise"]
ApiVersion = Literal["modelslim_v1", "multimodal_vlm_modelslim_v1"]

ALL_SUBGRAPHS: tuple[SubgraphType, ...] = ("norm-linear", "linear-linear", "ov", "up-down")
SSZ_DEFAULT_STEPS = 50


def _check_glob(value: str) -> str:
    error = pattern_error(value)
    if error:
        raise ValueError(error)
    return value


def _none_as(default: list[str]) -> BeforeValidator:
    """msModelSlim writes ``include: null`` for "the default"; read it as ``default``."""
    return BeforeValidator(lambda value: list(default) if value is None else value)


Globs = Annotated[list[Annotated[str, BeforeValidator(_check_glob)]], _none_as(["*"])]
ExcludeGlobs = Annotated[list[Annotated[str, BeforeValidator(_check_glob)]], _none_as([])]


class Strict(NullsAsDefaults):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@with_config(ConfigDict(extra="allow"))
class QuantExt(TypedDict, total=False):
    """``qconfig.*.ext``: ``group_size`` (per_group), ``step`` (ssz iterations); other keys kept."""

    group_size: PositiveInt
    step: PositiveInt


class QuantSpec(Strict):
    """One side (``act`` or ``weight``) of a qconfig."""

    scope: str
    dtype: QuantDtype = "int8"
    symmetric: bool = True
    method: str = "minmax"
    ext: QuantExt = Field(default_factory=lambda: QuantExt())

    @property
    def group_size(self) -> int | None:
        value = self.ext.get("group_size")
        return int(value) if value is not None else None

    @property
    def steps(self) -> int:
        """Iterations of the ssz search (``ext.step``, default 50)."""
        return int(self.ext.get("step", SSZ_DEFAULT_STEPS))

    @property
    def bits(self) -> int:
        return 4 if self.dtype == "int4" else 8


class ActQuantSpec(QuantSpec):
    scope: ActScope = "per_tensor"


class WeightQuantSpec(QuantSpec):
    scope: WeightScope = "per_channel"


class QConfig(Strict):
    """``act`` absent means weight-only quantization (W8A16, W4A16)."""

    act: ActQuantSpec | None = None
    weight: WeightQuantSpec


@processor("quantize the selected linears (weights, activations)", distributed=True)
class LinearQuant(Strict):
    type: Literal["linear_quant"] = "linear_quant"
    qconfig: QConfig
    include: Globs = Field(default_factory=lambda: ["*"])
    exclude: ExcludeGlobs = Field(default_factory=list)


@processor("linear_quant entries sharing one calibration pass (mixed precision)", distributed=True)
class Group(Strict):
    type: Literal["group"] = "group"
    configs: list[LinearQuant] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _only_linear_quant(cls, data: Any) -> Any:
        """Name the first member of another type (its other fields would only add noise)."""
        members = data.get("configs") if isinstance(data, dict) else None
        for index, member in enumerate(members if isinstance(members, list) else []):
            kind = member.get("type", "linear_quant") if isinstance(member, dict) else "linear_quant"
            if kind != "linear_quant":
                raise field_error(f"configs[{index}].type",
                                  f"only linear_quant entries can go inside a group (got {kind!r}); "
                                  "move it to spec.process, before the group")
        return data


class SmoothExt(Strict):
    """A smoothing entry's ``ext`` (quantjob's own options; msModelSlim ignores the key).

    ``sites``: ``family`` (default) smooths the subgraph kinds msModelSlim smooths for the model's
    family (norm-linear only, except Qwen3: all four; ``Adapter.smoothing_kinds``); ``all`` smooths
    every site quantjob's adapter lists for the family (norm-linear, ov, up-down). Either way
    ``enable_subgraph_type`` then selects among them. ``docs/algorithms.md`` measures both.
    """

    sites: Literal["family", "all"] = "family"


class FlexSmoothExt(SmoothExt):
    """``flex_smooth_quant``'s ``ext``: ``sites`` as every smoothing entry, and ``search_tokens``, the
    calibration tokens the (alpha, beta) search scores: ``probes`` (default) the bounded probe subset
    (token 0 and about ``PROBE_TOKENS`` = 1024 spread tokens of all samples, gathered to every
    rank; issue 23's table in ``docs/algorithms.md`` chose the number), ``all``
    every token of every sample, each rank scoring its own samples and the error sums added in
    global sample order (msModelSlim's data; more memory and time). ``docs/algorithms.md`` measures both.
    """

    search_tokens: Literal["probes", "all"] = "probes"


@processor("SmoothQuant-style outlier migration per subgraph (alpha, scale_min; asymmetric mode shifts norm "
           "outputs)", distributed=True, smoothing=True)
class IterSmooth(Strict):
    type: Literal["iter_smooth"] = "iter_smooth"
    alpha: float = Field(0.9, ge=0.0, le=1.0)
    scale_min: float = Field(1e-5, gt=0.0, le=1.0)
    symmetric: bool = True
    enable_subgraph_type: list[SubgraphType] = Field(default_factory=lambda: list(ALL_SUBGRAPHS))
    include: Globs = Field(default_factory=lambda: ["*"])
    exclude: ExcludeGlobs = Field(default_factory=list)
    ext: SmoothExt = Field(default_factory=SmoothExt)


@processor("smoothing with per-subgraph searched alpha/beta", distributed=True, statistics=("minmax", "probes"),
           smoothing=True)
class FlexSmoothQuant(Strict):
    """``flex_smooth_quant`` (alias ``flex_smooth``); alpha/beta None = searched per subgraph."""

    type: Literal["flex_smooth_quant", "flex_smooth"] = "flex_smooth_quant"
    alpha: float | None = Field(None, ge=0.0, le=1.0)
    beta: float | None = Field(None, ge=0.0, le=1.0)
    enable_subgraph_type: list[SubgraphType] = Field(default_factory=lambda: list(ALL_SUBGRAPHS))
    include: Globs = Field(default_factory=lambda: ["*"])
    exclude: ExcludeGlobs = Field(default_factory=list)
    ext: FlexSmoothExt = Field(default_factory=FlexSmoothExt)

    def statistics_needed(self) -> tuple[Statistic, ...]:
        """Every input row of the rank's samples when the search scores every token."""
        return ("rows",) if self.ext.search_tokens == "all" and (self.alpha is None or self.beta is None) else ()


class OtherProcessor(BaseModel):
    """A processor msModelSlim knows and quantjob does not model; options kept as written.

    It parses so that every problem of a document is reported at once; the check rejects it.
    """

    model_config = ConfigDict(extra="allow")
    type: str

    @field_validator("type")
    @classmethod
    def _known_name(cls, value: str) -> str:
        if catalogue.lookup("processor", value) is None:
            names = catalogue.names("processor")
            close = difflib.get_close_matches(value, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown processor {value!r}; {hint}known processors: {', '.join(names)}")
        return value


# Every registered processor's config class (``@processor`` above), others parsing as OtherProcessor.
# Built at run time from the registrations; a type checker sees any entry and narrows with isinstance.
if TYPE_CHECKING:
    Processor: TypeAlias = ProcessorConfig
else:
    Processor = processor_union(OtherProcessor)


class Saver(Strict):
    """One ``spec.save`` entry. ``part_file_size``: GB per weight file; 0 (read as None) or absent = one file.

    msModelSlim splits at 4 GB when the key is absent; quantjob writes one file then (the practice
    configs all set it explicitly). ``docs/modelslim-fields.md`` records the difference.
    """

    type: str = "ascendv1_saver"
    part_file_size: float | None = Field(default=None, ge=0, description="GB per weight file; 0 or absent = one file")
    save_directory: str | None = Field(default=None, description="with several savers: the sub-directory of the "
                                       "output this saver writes; ignored with one (the job's output decides)")
    ext: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_saver(cls, value: str) -> str:
        if catalogue.lookup("saver", value) is None:
            raise ValueError(f"unknown saver {value!r}; known savers: {', '.join(catalogue.names('saver'))}")
        return value

    @field_validator("part_file_size")
    @classmethod
    def _zero_is_one_file(cls, value: float | None) -> float | None:
        return None if value == 0 else value

    @property
    def part_bytes(self) -> int | None:
        """Largest weight file in bytes, or None for a single file (``part_file_size: 0``)."""
        return int(self.part_file_size * 1024 ** 3) if self.part_file_size else None


class PriorStage(Strict):
    """``spec.prior[]``: a stage run before the main one (msModelSlim's adapt_rotation); not supported."""

    process: list[dict[str, Any]] = Field(default_factory=list)
    dataset: str | None = None


class Spec(Strict):
    runner: RunnerName = "auto"
    process: list[Processor] = Field(min_length=1)
    save: list[Saver] = Field(default_factory=lambda: [Saver()])
    dataset: str | None = Field(None, description="calibration set name or file; the job's calibration wins")
    prior: list[PriorStage] = Field(default_factory=list)
    default_text: str | None = Field(None, description="multimodal configs: prompt paired with images")


class Label(NullsAsDefaults):
    model_config = ConfigDict(extra="allow")
    w_bit: int | None = None
    a_bit: int | None = None
    is_sparse: bool | None = None
    kv_cache: bool | None = None


class Metadata(NullsAsDefaults):
    model_config = ConfigDict(extra="allow")
    config_id: str | None = None
    score: float | None = None
    verified_model_types: list[str] = Field(default_factory=list)
    label: Label | None = None


class ModelslimConfig(NullsAsDefaults):
    """A whole ``modelslim_v1`` YAML document. Extra top-level keys (anchor holders) are kept."""

    model_config = ConfigDict(extra="allow")
    apiversion: ApiVersion = "modelslim_v1"
    metadata: Metadata = Field(default_factory=Metadata)
    spec: Spec
    dataset: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _v1_only(cls, data: Any) -> Any:
        """A modelslim_v0 document has another schema: report that alone, not its every field."""
        if isinstance(data, dict) and isinstance(data.get("apiversion"), str) \
                and data["apiversion"].startswith("modelslim_v0"):
            raise field_error("apiversion", f"{data['apiversion']!r} (calib_cfg/anti_cfg) is not supported; "
                                            "write a modelslim_v1 config (spec.process) or use a quant type preset")
        return data

    @property
    def multimodal(self) -> bool:
        return self.apiversion.startswith("multimodal")

    def calibration_dataset(self) -> str | None:
        """The dataset the config names: ``spec.dataset`` (msModelSlim's place) or top-level ``dataset``."""
        return self.spec.dataset or self.dataset

    def linear_quants(self) -> list[tuple[str, LinearQuant]]:
        """Every linear_quant entry with its field path, ``group`` entries flattened."""
        found: list[tuple[str, LinearQuant]] = []
        for index, proc in enumerate(self.spec.process):
            if isinstance(proc, LinearQuant):
                found.append((f"spec.process[{index}]", proc))
            elif isinstance(proc, Group):
                found.extend((f"spec.process[{index}].configs[{j}]", lq) for j, lq in enumerate(proc.configs))
        return found

    def linear_quant_for(self, module: str) -> LinearQuant | None:
        """The linear_quant entry that quantizes ``module`` (the first that selects it), or None."""
        return next((lq for _, lq in self.linear_quants() if matches(module, lq.include, lq.exclude)), None)
