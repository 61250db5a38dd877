"""The compatibility check (DESIGN.md section 4): one function, three callers (webhook, CLI, worker).

``resolve`` decides the runner and converts savers for it; ``check`` returns only the problems.
``check_document`` parses raw YAML data (a QuantJob manifest or a modelslim_v1 config) first,
turning validation errors into problems with field paths, so nothing here raises on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from quantjob.api import catalogue
from quantjob.api.modelslim import FlexSmoothQuant, IterSmooth, ModelslimConfig, Saver
from quantjob.api.problems import Problem, from_validation_error, has_errors
from quantjob.api.resource import KIND, QuantJob

# config.json keys that mark a multimodal model (a vision or audio tower beside the LLM).
MULTIMODAL_KEYS = ("vision_config", "audio_config", "visual", "vision_tower", "mm_vision_tower", "speech_config")


@dataclass
class Resolution:
    """What the worker runs: the runner, the world size, the config with savers converted."""

    runner: str | None
    world_size: int
    config: ModelslimConfig | None
    problems: list[Problem] = field(default_factory=list)
    job: QuantJob | None = None

    @property
    def ok(self) -> bool:
        return not has_errors(self.problems)


def is_multimodal(model_config: dict[str, Any] | None) -> bool:
    return bool(model_config) and any(key in model_config for key in MULTIMODAL_KEYS)  # type: ignore[operator]


def _resolve_runner(requested: str, devices: int, prefix: str, problems: list[Problem]) -> str:
    if requested == "auto":
        return "dp_layer_wise" if devices > 1 else "layer_wise"
    if requested == "dp_layer_wise" and devices <= 1:
        problems.append(Problem(f"{prefix}spec.runner",
                                "dp_layer_wise needs more than one device; falling back to layer_wise "
                                "(set devices above 1 to run data-parallel)", "warning"))
        return "layer_wise"
    if requested == "layer_wise" and devices > 1:
        problems.append(Problem(f"{prefix}spec.runner",
                                f"layer_wise uses one device but {devices} are requested; use runner "
                                "dp_layer_wise (or auto) to use them all, or request one device", "error"))
    return requested


def _check_algorithms(config: ModelslimConfig, distributed: bool, prefix: str, problems: list[Problem]) -> None:
    mode = "under dp_layer_wise" if distributed else ""
    for index, proc in enumerate(config.spec.process):
        entry = catalogue.lookup("processor", proc.type)
        path = f"{prefix}spec.process[{index}].type"
        alternatives = ", ".join(catalogue.supported("processor", distributed=distributed))
        if entry is None or not entry.implemented:
            problems.append(Problem(path, f"processor {proc.type!r} is not supported; use one of: {alternatives}"))
        elif distributed and not entry.distributed:
            problems.append(Problem(path, f"processor {proc.type!r} (process[{index}]) cannot run {mode}; "
                                          f"use runner layer_wise, or one of: {alternatives}"))
        if isinstance(proc, (IterSmooth, FlexSmoothQuant)) and not proc.enable_subgraph_type:
            problems.append(Problem(f"{prefix}spec.process[{index}].enable_subgraph_type",
                                    "empty list smooths nothing; name at least one subgraph type"))
    for path, lq in config.linear_quants():
        sides = [("weight", lq.qconfig.weight)] + ([("act", lq.qconfig.act)] if lq.qconfig.act else [])
        for side, spec in sides:
            at = f"{prefix}{path}.qconfig.{side}"
            entry = catalogue.lookup("observer", spec.method)
            methods = ", ".join(catalogue.supported("observer", distributed=distributed))
            if entry is None or not entry.implemented:
                problems.append(Problem(f"{at}.method", f"method {spec.method!r} is not supported; use one of: {methods}"))
            elif distributed and not entry.distributed:
                problems.append(Problem(f"{at}.method", f"method {spec.method!r} cannot run {mode}; "
                                                        f"use runner layer_wise, or one of: {methods}"))
            if spec.method == "ssz" and spec.scope == "per_group":
                problems.append(Problem(f"{at}.method", "ssz does not support per_group; use minmax or per_channel"))
        weight, act = lq.qconfig.weight, lq.qconfig.act
        at = f"{prefix}{path}.qconfig"
        if weight.scope == "per_group":
            if weight.group_size is None or weight.group_size <= 0:
                problems.append(Problem(f"{at}.weight.ext.group_size",
                                        "per_group needs ext.group_size (a positive integer, e.g. 128)"))
        elif weight.group_size is not None:
            problems.append(Problem(f"{at}.weight.ext.group_size",
                                    "group_size is only used with scope per_group; remove it or set scope per_group",
                                    "warning"))
        if act is not None:
            if act.dtype != "int8":
                problems.append(Problem(f"{at}.act.dtype", "only int8 activations are supported; use int8"))
            if act.scope == "pd_mix":
                problems.append(Problem(f"{at}.act.scope", "pd_mix is not supported yet; use per_tensor or per_token"))
            if act.scope == "per_token" and not act.symmetric:
                problems.append(Problem(f"{at}.act.symmetric",
                                        "per_token (dynamic) activations are quantized symmetrically at run "
                                        "time; symmetric: false is ignored", "warning"))
            if weight.dtype == "int4":
                problems.append(Problem(f"{at}.weight.dtype",
                                        "int4 weights are supported weight-only (W4A16); remove act or use int8"))
        if weight.scope == "per_tensor":
            problems.append(Problem(f"{at}.weight.scope", "per_tensor weights are not supported; use per_channel"))


def _convert_savers(config: ModelslimConfig, distributed: bool, prefix: str,
                    problems: list[Problem]) -> ModelslimConfig:
    savers: list[Saver] = []
    for index, saver in enumerate(config.spec.save):
        entry = catalogue.lookup("saver", saver.type)
        path = f"{prefix}spec.save[{index}].type"
        if entry is None or not entry.implemented:
            problems.append(Problem(path, f"saver {saver.type!r} is not supported; use one of: "
                                          f"{', '.join(catalogue.supported('saver'))}"))
            savers.append(saver)
            continue
        if distributed and entry.distributed_variant:
            saver = saver.model_copy(update={"type": entry.distributed_variant})
        savers.append(saver)
    spec = config.spec.model_copy(update={"save": savers})
    return config.model_copy(update={"spec": spec})


def resolve(config: ModelslimConfig, devices: int, model_config: dict[str, Any] | None = None,
            prefix: str = "spec.config.") -> Resolution:
    """Runner, savers and problems for ``config`` run on ``devices`` devices."""
    problems: list[Problem] = []
    runner = _resolve_runner(config.spec.runner, devices, prefix, problems)
    distributed = runner == "dp_layer_wise"
    _check_algorithms(config, distributed, prefix, problems)
    if distributed and is_multimodal(model_config):
        problems.append(Problem(f"{prefix}spec.runner",
                                "multimodal models (vision/audio tower in config.json) are not supported "
                                "under dp_layer_wise; use runner layer_wise with one device"))
    resolved = _convert_savers(config, distributed, prefix, problems)
    world_size = devices if distributed else 1
    resolved.spec.runner = runner  # type: ignore[assignment]
    return Resolution(runner=runner, world_size=world_size, config=resolved, problems=problems)


def check(config: ModelslimConfig, devices: int, model_config: dict[str, Any] | None = None,
          prefix: str = "spec.config.") -> list[Problem]:
    return resolve(config, devices, model_config, prefix).problems


def check_document(data: Any, devices: int | None = None,
                   model_config: dict[str, Any] | None = None) -> Resolution:
    """Parse and check a QuantJob manifest or a modelslim_v1 config given as plain data.

    ``devices`` overrides the manifest's ``spec.devices.count`` (and defaults to 1 for a bare config).
    """
    if not isinstance(data, dict):
        return Resolution(None, 0, None, [Problem("<document>", "expected a YAML mapping (a QuantJob or "
                                                              "a modelslim_v1 config)")])
    if data.get("kind") == KIND or "apiVersion" in data:
        try:
            job = QuantJob.model_validate(data)
        except ValidationError as error:
            return Resolution(None, 0, None, from_validation_error(error))
        count = devices if devices is not None else job.spec.devices.count
        prefix = "spec.config." if job.spec.config is not None else "spec.quantType:"
        result = resolve(job.spec.resolved_config(), count, model_config, prefix)
        result.job = job
        return result
    try:
        config = ModelslimConfig.model_validate(data)
    except ValidationError as error:
        return Resolution(None, 0, None, from_validation_error(error))
    return resolve(config, devices if devices is not None else 1, model_config, prefix="")
