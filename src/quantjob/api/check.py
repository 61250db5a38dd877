"""The compatibility check (docs/design.md, section 3): one function, three callers (webhook, CLI, worker).

``resolve`` decides the runner and converts savers for it; ``check`` returns only the problems.
``check_document`` parses raw YAML data (a QuantJob manifest or a modelslim_v1 config) first,
turning validation errors into problems with field paths, so nothing here raises on bad input.
Which algorithm may run where is read from ``quantjob.api.catalogue`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from quantjob.api import catalogue
from quantjob.api.modelslim import (
    Group,
    LinearQuant,
    ModelslimConfig,
    OtherProcessor,
    QuantSpec,
    Saver,
)
from quantjob.api.problems import Problem, from_validation_error, has_errors
from quantjob.api.resource import API_VERSION, GROUP, KIND, QuantJob
from quantjob.api.rules_output import output_problems
from quantjob.api.smoothing_rules import smoothing_problems

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
    return isinstance(model_config, dict) and any(key in model_config for key in MULTIMODAL_KEYS)


def _resolve_runner(requested: str, devices: int, prefix: str, problems: list[Problem]) -> str:
    at = f"{prefix}spec.runner"
    if requested == "model_wise":
        problems.append(Problem(at, "model_wise loads the whole model at once; quantjob runs the same processors "
                                    "layer by layer instead (treated as runner auto)", "warning"))
        requested = "auto"
    if requested == "auto":
        return "dp_layer_wise" if devices > 1 else "layer_wise"
    if requested == "dp_layer_wise" and devices <= 1:
        problems.append(Problem(at, "dp_layer_wise needs more than one device; falling back to layer_wise "
                                    "(set devices above 1 to run data-parallel)", "warning"))
        return "layer_wise"
    if requested == "layer_wise" and devices > 1:
        problems.append(Problem(at, f"layer_wise uses one device but {devices} are requested; use runner "
                                    "dp_layer_wise (or auto) to use them all, or request one device"))
    return requested


def _capability(kind: catalogue.Kind, name: str, what: str, distributed: bool,
                at: str, problems: list[Problem]) -> catalogue.Algorithm | None:
    """The catalogue entry for ``name``; a problem when it is unknown, not implemented or not distributed."""
    entry = catalogue.lookup(kind, name)
    choices = ", ".join(catalogue.supported(kind, distributed=distributed)) or "none yet"
    if entry is None:
        problems.append(Problem(at, f"unknown {what} {name!r}; use one of: {choices}"))
    elif not entry.implemented:
        problems.append(Problem(at, f"{what} {name!r} is a known msModelSlim {what}, not supported yet by "
                                    f"quantjob; remove it or use one of: {choices}"))
    elif distributed and not catalogue.runs_distributed(entry):
        problems.append(Problem(at, f"{what} {name!r} cannot run under dp_layer_wise (its statistics do not "
                                    f"reduce across ranks); use runner layer_wise with one device, or one of: "
                                    f"{choices}"))
    else:
        return entry
    return None


def _check_processors(config: ModelslimConfig, distributed: bool, prefix: str, problems: list[Problem]) -> None:
    for index in range(len(config.spec.prior)):
        problems.append(Problem(f"{prefix}spec.prior[{index}]", "prior stages (e.g. adapt_rotation stage 1) are not "
                                                                "supported yet; remove spec.prior"))
    for index, proc in enumerate(config.spec.process):
        at = f"{prefix}spec.process[{index}]"
        _capability("processor", proc.type, "processor", distributed, f"{at}.type", problems)
        if not isinstance(proc, OtherProcessor) and getattr(proc, "enable_subgraph_type", None) == []:
            problems.append(Problem(f"{at}.enable_subgraph_type",
                                    "an empty list smooths nothing; name at least one of: "
                                    "norm-linear, linear-linear, ov, up-down (or remove the processor)"))
        if isinstance(proc, Group):
            for j, member in enumerate(proc.configs):
                _capability("processor", member.type, "processor", distributed,
                            f"{at}.configs[{j}].type", problems)


def _check_side(spec: QuantSpec, at: str, distributed: bool, problems: list[Problem]) -> None:
    entry = _capability("observer", spec.method, "method", distributed, f"{at}.method", problems)
    if entry is not None and entry.scopes and spec.scope not in entry.scopes:
        problems.append(Problem(f"{at}.method", f"method {spec.method!r} supports scope "
                                                f"{' or '.join(entry.scopes)} only, not {spec.scope}; "
                                                "use method minmax or change the scope"))


def _check_scheme(lq: LinearQuant, at: str, problems: list[Problem]) -> None:
    weight, act = lq.qconfig.weight, lq.qconfig.act
    if weight.scope == "per_group" and weight.group_size is None:
        problems.append(Problem(f"{at}.weight.ext.group_size",
                                "scope per_group needs ext.group_size (a positive integer, e.g. 128)"))
    elif weight.scope != "per_group" and weight.group_size is not None:
        problems.append(Problem(f"{at}.weight.ext.group_size",
                                f"group_size is only used with scope per_group (scope is {weight.scope}); "
                                "it is ignored", "warning"))
    if weight.scope == "per_tensor":
        problems.append(Problem(f"{at}.weight.scope", "per_tensor weights are not supported; use per_channel"))
    if act is None:
        return
    if act.dtype != "int8":
        problems.append(Problem(f"{at}.act.dtype", f"{act.dtype} activations are not supported; use int8"))
    if act.scope == "pd_mix":
        problems.append(Problem(f"{at}.act.scope", "pd_mix is not supported yet; use per_tensor (static) "
                                                   "or per_token (dynamic)"))
    if act.scope == "per_token" and not act.symmetric:
        problems.append(Problem(f"{at}.act.symmetric", "per_token (dynamic) activations are quantized "
                                                       "symmetrically at run time; symmetric: false is ignored",
                                "warning"))
    if weight.dtype == "int4":
        problems.append(Problem(f"{at}.weight.dtype", "int4 weights are supported weight-only (W4A16); "
                                                      "remove qconfig.act or use dtype int8"))


def _check_linear_quants(config: ModelslimConfig, distributed: bool, prefix: str, problems: list[Problem]) -> None:
    for path, lq in config.linear_quants():
        at = f"{prefix}{path}.qconfig"
        _check_side(lq.qconfig.weight, f"{at}.weight", distributed, problems)
        if lq.qconfig.act is not None:
            _check_side(lq.qconfig.act, f"{at}.act", distributed, problems)
        _check_scheme(lq, at, problems)


def _convert_savers(config: ModelslimConfig, distributed: bool, prefix: str,
                    problems: list[Problem]) -> ModelslimConfig:
    if not config.spec.save:
        problems.append(Problem(f"{prefix}spec.save", "no saver: nothing would be written; "
                                                      "add - type: ascendv1_saver"))
    savers: list[Saver] = []
    for index, saver in enumerate(config.spec.save):
        at = f"{prefix}spec.save[{index}]"
        entry = _capability("saver", saver.type, "saver", distributed, f"{at}.type", problems)
        if saver.save_directory not in (None, ".") and len(config.spec.save) == 1:  # several: see rules_output
            problems.append(Problem(f"{at}.save_directory", "ignored: files are written to the job's output "
                                                            "location (spec.output)", "warning"))
        if entry is not None and distributed and not entry.distributed and entry.distributed_variant:
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
    _check_processors(config, distributed, prefix, problems)
    _check_linear_quants(config, distributed, prefix, problems)
    problems.extend(smoothing_problems(config, prefix))
    if distributed and (config.multimodal or is_multimodal(model_config)):
        problems.append(Problem(f"{prefix}spec.runner",
                                "multimodal models (a vision/audio tower) are not supported under "
                                "dp_layer_wise; use runner layer_wise with one device"))
    resolved = _convert_savers(config, distributed, prefix, problems)
    problems.extend(output_problems(resolved, model_config, prefix))
    resolved.spec.runner = runner  # type: ignore[assignment]
    world_size = devices if distributed else 1
    return Resolution(runner=runner, world_size=world_size, config=resolved, problems=problems)


def check(config: ModelslimConfig, devices: int, model_config: dict[str, Any] | None = None,
          prefix: str = "spec.config.") -> list[Problem]:
    """Only the problems of ``resolve``."""
    return resolve(config, devices, model_config, prefix).problems


def _job_problems(job: QuantJob) -> list[Problem]:
    """Rules that look at the job around the config: where files come from and go."""
    spec = job.spec
    problems: list[Problem] = []
    if spec.output.pvc == spec.model.pvc and spec.output.path.strip("/") == spec.model.path.strip("/"):
        problems.append(Problem("spec.output.path", "output is the model directory itself; the quantized files "
                                                    "would overwrite the model: choose another path"))
    if spec.config is not None and spec.config.calibration_dataset() and spec.calibration.path:
        problems.append(Problem("spec.config.spec.dataset", "ignored: the job reads calibration data from "
                                                            "spec.calibration.path", "warning"))
    return problems


def _resolve_job(job: QuantJob, devices: int | None, model_config: dict[str, Any] | None) -> Resolution:
    count = devices if devices is not None else job.spec.devices.count
    if job.spec.config is not None:
        result = resolve(job.spec.config, count, model_config, "spec.config.")
    else:  # a preset: its problems belong to the field that chose it
        result = resolve(job.spec.resolved_config(), count, model_config, "")
        result.problems = [Problem("spec.quantType", p.message, p.severity) for p in result.problems]
    result.problems = _job_problems(job) + result.problems
    result.job = job
    return result


def check_document(data: Any, devices: int | None = None,
                   model_config: dict[str, Any] | None = None) -> Resolution:
    """Parse and check a QuantJob manifest or a modelslim_v1 config given as plain data.

    ``devices`` overrides the manifest's ``spec.devices.count`` (and defaults to 1 for a bare config).
    """
    if not isinstance(data, dict):
        return Resolution(None, 0, None, [Problem("<document>", "expected a YAML mapping: a QuantJob "
                                                                "manifest or a modelslim_v1 config")])
    if "kind" in data or "apiVersion" in data:
        if data.get("kind") != KIND:
            return Resolution(None, 0, None, [Problem("kind", f"expected kind {KIND} (apiVersion {API_VERSION}), "
                                                              f"got {data.get('kind')!r}")])
        if not str(data.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return Resolution(None, 0, None, [Problem("apiVersion", f"expected {API_VERSION}, "
                                                                    f"got {data.get('apiVersion')!r}")])
        try:
            job = QuantJob.model_validate(data)
        except ValidationError as error:
            return Resolution(None, 0, None, from_validation_error(error))
        return _resolve_job(job, devices, model_config)
    try:
        config = ModelslimConfig.model_validate(data)
    except ValidationError as error:
        return Resolution(None, 0, None, from_validation_error(error))
    return resolve(config, devices if devices is not None else 1, model_config, prefix="")
