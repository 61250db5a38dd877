"""The options of one quantization run: ONE table from which the CLI flags, the QuantJob's spec
fields, the pod's worker arguments and the worker's job are derived.

A field of ``RunOptions`` (its type, default and bounds) with its ``Option`` (the words and where
a QuantJob holds it) is the whole registration of a run option:

- ``quantjob quantize``'s flag ``--<name>`` (``add_run_option_flags``, ``quantjob.cli.quantize``);
- the QuantJob field (``spec_fields``, ``quantjob.api.resource.QuantJobSpec``): a new option is a
  top-level ``spec.<camelName>``; the options that predate the table stay where the CRD already
  groups them (``spec.model.path``, ``spec.calibration.samples``, ...), named by ``Option.spec``;
- the pod's ``quantize`` arguments (``quantjob.operator.builders.worker_args``), read from the
  QuantJob through ``Option.spec``;
- ``WorkerJob`` (``quantjob.worker.loop.runner``) and the validated command line
  (``quantjob.worker.entry.WorkerArgs``) are subclasses of ``RunOptions``;
- for an option that changes the output's bytes (``Option.identity``), the run id
  (``quantjob.worker.loop.runner.run_id_for``) and the provenance record (``identity_options``).

``tests/unit/test_run_options.py`` adds a fake field and finds it in all four.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

NextLayerInput = Literal["float", "quantized"]
Identity = Literal["always", "unless_default"]


@dataclass(frozen=True)
class Option:
    """How one run option appears outside ``RunOptions``.

    ``help``: the CLI flag's help. ``spec``: where a QuantJob holds it, a dotted path in
    ``spec`` (``"calibration.samples"``); ``None`` for a top-level field generated from this entry
    (``spec.<camelName>``, described by ``spec_description``); ``""`` for an option a QuantJob does
    not set (the worker's default applies in a pod). A ``Path`` option's first spec segment names
    the pod volume it lies on (``model``, ``output``, ``calibration``). ``msmodelslim_bool``: the
    flag takes ``True``/``False`` as msmodelslim's does, or stands bare for True.

    ``identity``: the option changes the output's bytes, so it is part of the run's identity (the
    run id a resumed run must match, ``runner.run_id_for``). A new one is ``"unless_default"``: the
    id hashes it only when it differs from its default, so adding it changes the id of no run written
    before it. ``"always"``: hashed at any value; only the options the first run ids hashed have it
    (changing it would change every earlier id). ``identity_key``: the name it is hashed under, when
    not its own (``calib_samples`` is ``samples``); keep it, or earlier ids change.
    """

    help: str
    spec: str | None = None
    spec_description: str = ""
    metavar: str | None = None
    msmodelslim_bool: bool = False
    identity: Identity | None = None
    identity_key: str = ""


class RunOptions(BaseModel):
    """Where to read and write, which calibration, and how the loop runs (not which algorithm)."""

    model_config = ConfigDict(extra="forbid")

    model_path: Annotated[Path, Option("model directory (config.json, safetensors, tokenizer)", spec="model.path")]
    save_path: Annotated[Path, Option("output directory", spec="output.path")]
    calib_file: Annotated[Path | None, Option(
        "jsonl ({\"text\"} or {\"input_ids\"} lines) or plain text; default: the built-in calibration set",
        spec="calibration.path")] = None
    calib_samples: Annotated[int, Option("samples to use (default 128)", spec="calibration.samples",
                                         identity="always", identity_key="samples")] = Field(128, ge=1)
    max_length: Annotated[int, Option("tokens per sample at most (default 2048)", spec="calibration.maxLength",
                                      identity="always")] = Field(2048, ge=1)
    trust_remote_code: Annotated[bool, Option(
        "allow the model's own Python code: True or False as in msmodelslim, or the bare flag for True "
        "(default False)", spec="model.trustRemoteCode", metavar="True|False", msmodelslim_bool=True)] = False
    model_type: Annotated[str | None, Option("override config.json's model_type (e.g. Qwen2.5-7B, llama)",
                                             spec="model.modelType", identity="always")] = None
    overwrite: Annotated[bool, Option("replace a complete output at --save_path", spec="output.overwrite")] = False
    next_layer_input: Annotated[NextLayerInput, Option(
        "feed each layer the float (default) or the quantized outputs of the previous one",
        spec_description="inputs of layer i+1: outputs of the float or of the quantized layer i",
        identity="always")] = "float"
    error_samples: Annotated[int, Option("samples for the per-layer quantization error table (default 8)",
                                         spec="", identity="always")] = Field(8, ge=0)
    # MoE: also run every calibration token through every routed expert, for statistics only
    # (quantjob.worker.model.experts): static activation scales for experts no token is routed to
    calibrate_all_experts: Annotated[bool, Option(
        "MoE models: also run every calibration token through every routed expert, for statistics only "
        "(static activation scales for experts no token is routed to); the outputs stay the routed ones",
        spec_description="MoE models: also run every calibration token through every routed expert, for "
                         "statistics only (static activation scales for experts no token is routed to)",
        identity="unless_default")] = False


def option_of(field: FieldInfo) -> Option | None:
    """The ``Option`` of one field (None for a field that is not a run option)."""
    return next((item for item in field.metadata if isinstance(item, Option)), None)


def run_options(model: type[BaseModel] = RunOptions) -> dict[str, tuple[FieldInfo, Option]]:
    """The table: each run option's field (type, default, bounds) and ``Option``, in order. A model
    built on ``RunOptions`` (a test's, with one more option) gives its own table; its fields without
    an ``Option`` (``WorkerJob.config``, the CLI's ``--device``) are not run options."""
    found = {name: (field, option_of(field)) for name, field in model.model_fields.items()}
    return {name: (field, option) for name, (field, option) in found.items() if option is not None}


def identity_options(model: type[BaseModel] = RunOptions) -> dict[str, tuple[FieldInfo, Option]]:
    """The run options that are part of the run's identity (``Option.identity``), in table order."""
    return {name: (field, option) for name, (field, option) in run_options(model).items()
            if option.identity is not None}


def identity_values(options: RunOptions) -> dict[str, Any]:
    """What the run id hashes of ``options``: each identity option under its ``identity_key`` (or
    name), as JSON; an ``"unless_default"`` one only when it differs from its default."""
    table = identity_options(type(options))
    values = options.model_dump(mode="json", include=set(table))
    return {option.identity_key or name: values[name] for name, (field, option) in table.items()
            if option.identity == "always" or getattr(options, name) != field.get_default(call_default_factory=True)}


def camel(name: str) -> str:
    """``next_layer_input`` -> ``nextLayerInput`` (a QuantJob field's name)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def spec_path(name: str, option: Option) -> str | None:
    """Where a QuantJob holds the option (dotted, under ``spec``), or None if it does not."""
    if option.spec is None:
        return camel(name)
    return option.spec or None


def spec_fields(model: type[BaseModel] = RunOptions) -> dict[str, Any]:
    """The top-level QuantJob spec fields the table generates, as ``pydantic.create_model`` takes them."""
    out: dict[str, Any] = {}
    for name, (field, option) in run_options(model).items():
        if option.spec is not None:
            continue
        bounds = [item for item in field.metadata if not isinstance(item, Option)]
        annotation: Any = field.annotation
        for bound in bounds:  # the table's bounds (ge, le, ...) hold in the QuantJob too
            annotation = Annotated[annotation, bound]
        out[camel(name)] = (annotation, Field(field.default, description=option.spec_description or option.help))
    return out


def choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """A ``Literal``'s values (a flag's choices), else None."""
    return get_args(annotation) if get_origin(annotation) is Literal else None
