"""The worker's entry point: ``main(args) -> int`` runs one quantization, or one rank of it.

``quantjob quantize`` (``quantjob.cli.quantize``) parses the command line into ``WorkerArgs`` and
calls ``main``. The config is checked (``quantjob.api.check.resolve``) before any weight is read:
problems are printed as ``path: message`` and errors return 2. Every expected failure prints one
``quantjob: error: ...`` line (and, in a pod, the termination message) and returns its code from
``quantjob.api.exit_codes``: 2 for bad flags, config or environment, 3 for bad input the worker
finds (missing files, corrupt or non-finite weights, empty calibration, an occupied output, a full
output volume), 1 for a broken group (a lost or stuck peer, a collective timeout); crashes raise,
keeping their traceback. With several devices and no ``RANK`` in the environment, the local
launcher starts one process per device, each re-running the command line as one rank.

Nothing here imports torch at module level: the launcher's path stays light.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, model_validator

from quantjob.api import exit_codes
from quantjob.api.check import resolve
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.presets import QUANT_TYPES, preset
from quantjob.api.problems import from_validation_error, has_errors
from quantjob.api.run_options import RunOptions, run_options
from quantjob.api.yaml_input import MAX_BYTES, YamlProblem, load_documents, too_large
from quantjob.worker.group.device import DeviceSpec

if TYPE_CHECKING:
    from quantjob.worker.loop.runner import RunSummary


class WorkerArgs(RunOptions):
    """The worker's command line, validated: the run's options plus the device, the config source
    and the group's timeouts (``quantjob quantize`` parses it)."""

    device: str = "cpu"
    quant_type: str | None = None
    config_path: Path | None = None
    rendezvous_timeout: float = Field(600.0, gt=0)
    collective_timeout: float | None = Field(None, gt=0, allow_inf_nan=False)  # None: the environment's or 600

    @model_validator(mode="after")
    def _one_config(self) -> WorkerArgs:
        if (self.quant_type is None) == (self.config_path is None):
            raise ValueError("give exactly one of --quant_type and --config_path")
        if self.quant_type is not None and self.quant_type.lower() not in QUANT_TYPES:
            raise ValueError(f"--quant_type {self.quant_type!r} is unknown; choose one of: {', '.join(QUANT_TYPES)}")
        return self

    def argv(self) -> list[str]:
        """This command line again (what the local launcher runs once per rank)."""
        out = ["quantize"]
        for name, value in self.model_dump().items():
            if value is None or value is False:
                continue
            flag = f"--{name}"
            out.extend([flag] if value is True else [flag, str(value)])
        return out


TERMINATION_LOG = Path("/dev/termination-log")


def _fail(message: str, code: int = exit_codes.INPUT) -> int:
    """Report an expected failure: one line on stderr and, in a pod, the termination message
    (the operator copies it into the QuantJob's Failed condition); returns ``code``."""
    print(f"quantjob: error: {message}", file=sys.stderr)
    _write_termination_log(message)
    return code


def _write_termination_log(message: str) -> None:
    if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        try:
            TERMINATION_LOG.write_text(message[:4000], encoding="utf-8")
        except OSError:
            pass


def load_config(args: WorkerArgs) -> ModelslimConfig | list[str]:
    if args.quant_type is not None:
        return preset(args.quant_type)
    assert args.config_path is not None
    try:
        with args.config_path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
        found = too_large(len(raw)) or load_documents(raw.decode("utf-8"))
    except OSError as error:
        return [f"{args.config_path}: cannot read ({error.strerror}); fix --config_path"]
    except UnicodeDecodeError:
        return [f"{args.config_path}: not UTF-8 text; give a modelslim_v1 YAML config"]
    if isinstance(found, YamlProblem):
        where = f"{args.config_path}:{found.line}" if found.line else str(args.config_path)
        return [f"quantjob: error: {where}: {found.message}"]  # one line, as render says it
    if len(found) > 1:
        return [f"{args.config_path}: holds {len(found)} YAML documents; give one modelslim_v1 config"]
    data = found[0] if found else None
    try:
        return ModelslimConfig.model_validate(data)
    except ValidationError as error:
        return [f"{args.config_path}: {problem}" for problem in from_validation_error(error)]


def _calib_file(args: WorkerArgs, config: ModelslimConfig) -> Path | None:
    """``--calib_file``, else the config's ``dataset`` when it names an existing file."""
    dataset = config.calibration_dataset()
    if args.calib_file is not None or not dataset:
        return args.calib_file
    base = args.config_path.parent if args.config_path else Path.cwd()
    for candidate in (Path(dataset), base / dataset):
        if os.path.isfile(candidate):  # False, not an error, for a name the kernel refuses
            return candidate
    print(f"quantjob: warning: dataset {dataset!r} in the config is not a file here; using the built-in "
          "calibration set (pass --calib_file to choose one)", file=sys.stderr)
    return None


def run_option_values(args: RunOptions) -> dict[str, Any]:
    """The run options of ``args``, by the table (what ``WorkerJob`` takes from the command line)."""
    return {name: getattr(args, name) for name in run_options(type(args))}


@dataclass(frozen=True)
class _Checked:
    """What the checks before any weight is read found: where to run, the resolved config and the
    model's config.json (read once here; the run gets this mapping and does not read the file again)."""

    devices: DeviceSpec
    config: ModelslimConfig
    in_group: bool  # one rank of a group (a Job pod, or a process of the local launcher)
    collective_timeout_s: float
    model_config: dict[str, Any]


def main(args: WorkerArgs) -> int:
    """Run the quantization ``args`` describe (one rank of it in a group); the exit code."""
    from quantjob.worker.group.threads import reproducible_math_env

    reproducible_math_env(os.environ)  # before torch is imported, and inherited by launched ranks
    checked = _check(args)
    if isinstance(checked, int):
        return checked
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from quantjob.worker.group.launcher import die_with_launcher, launch

    if checked.devices.count > 1 and not checked.in_group:
        try:
            return launch(args.argv(), checked.devices)
        except ValueError as error:  # the devices do not fit the visible ones: nothing started
            return _fail(str(error), exit_codes.USAGE)
    die_with_launcher()  # a rank of the local launcher (no-op otherwise) goes when the launcher goes
    return _run_rank(args, checked)


def _check(args: WorkerArgs) -> _Checked | int:
    """The flags, the config and the model's config.json, before any weight is read: what was found,
    or the exit code after printing the problems."""
    from quantjob.worker.errors import QuantJobError
    from quantjob.worker.group import device as devices
    from quantjob.worker.model.adapters import adapter_for
    from quantjob.worker.model.fp8 import fp8_blocks
    from quantjob.worker.model.model_config import read_model_config
    from quantjob.worker.savers.save_path import name_too_long

    for flag, path in (("--model_path", args.model_path), ("--save_path", args.save_path),
                       ("--calib_file", args.calib_file)):
        why = name_too_long(path) if path is not None else None
        if why is not None:
            return _fail(f"{flag} {path}: {why}; fix: choose a shorter path", exit_codes.INPUT)
    try:
        spec = devices.parse_devices(args.device)
    except ValueError as error:
        print(f"quantjob: error: {error}", file=sys.stderr)
        return exit_codes.USAGE
    loaded = load_config(args)
    if isinstance(loaded, list):
        for line in loaded:
            print(line, file=sys.stderr)
        return exit_codes.USAGE
    try:
        model_config = read_model_config(args.model_path)
        adapter_for(model_config, args.model_type, config_file=str(args.model_path / "config.json"))
        fp8_blocks(model_config, str(args.model_path / "config.json"))  # an already quantized model: refused now
    except QuantJobError as error:
        return _fail(str(error), error.exit_code)
    # one rank of a group (a Job pod, or a process of the local launcher): the group's size counts
    from quantjob.worker.group.group_env import collective_timeout_s, read_group_env

    try:
        found = read_group_env()
        timeout_s = collective_timeout_s(args.collective_timeout)
    except ValueError as error:  # a pod's environment: the message goes to the termination log too
        return _fail(str(error), exit_codes.USAGE)
    in_group = found.world_size > 1 or any(os.environ.get(name, "").strip()
                                           for name in ("RANK", "JOB_COMPLETION_INDEX"))
    world_size = found.world_size if in_group else spec.count
    resolution = resolve(loaded, devices=world_size, model_config=model_config, prefix="")
    problems = resolution.problems
    for problem in problems:
        print(str(problem), file=sys.stderr)
    if has_errors(problems) or resolution.config is None:
        if in_group:  # a pod: the operator copies the termination message into the QuantJob
            _write_termination_log("; ".join(str(p) for p in problems if p.severity == "error"))
        return exit_codes.USAGE
    return _Checked(spec, resolution.config, in_group, timeout_s, model_config)


def _run_rank(args: WorkerArgs, checked: _Checked) -> int:
    """This process's rank of the run: join the group, run the loop, print the summary on rank 0."""
    import torch

    from quantjob.worker.errors import QuantJobError
    from quantjob.worker.group import device as devices
    from quantjob.worker.group.distributed import (
        close_group,
        init_group_from_env,
        local_device_index,
    )
    from quantjob.worker.group.launcher import available_cores
    from quantjob.worker.group.threads import threads_per_rank
    from quantjob.worker.loop.runner import WorkerJob, run_quantization
    from quantjob.worker.progress import default_progress

    # the launcher's rule for its ranks, for this process too (a pod, or a single --device cpu)
    torch.set_num_threads(threads_per_rank(1, available_cores(), os.environ))
    job = WorkerJob(**{**run_option_values(args), "calib_file": _calib_file(args, checked.config)},
                    config=checked.config)
    spec = checked.devices
    try:
        group = init_group_from_env(spec.type, timeout_s=args.rendezvous_timeout,
                                    collective_timeout_s=checked.collective_timeout_s)
        device = devices.torch_device(spec.type, local_device_index(spec, group))
    except ValueError as error:
        return _fail(str(error), exit_codes.USAGE)
    except (RuntimeError, TimeoutError) as error:  # no device now, rank 0 not reachable: a restart may help
        return _fail(str(error), exit_codes.CRASH)
    try:
        summary = run_quantization(job, group, device, default_progress(group), model_config=checked.model_config)
    except QuantJobError as error:
        return _fail(str(error), error.exit_code)
    except OSError as error:
        from quantjob.worker.savers.directory import volume_full

        if error.errno == errno.ENAMETOOLONG:  # a name built from the inputs (the checks above cover the flags)
            return _fail(f"{error.filename or args.save_path}: {error.strerror}; fix: choose shorter paths",
                         exit_codes.INPUT)
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return _fail(str(volume_full(args.save_path, error)), exit_codes.INPUT)
    finally:
        close_group()
    if group.is_main:
        print(_summary_text(summary))
    return 0


def _summary_text(summary: RunSummary) -> str:
    from quantjob.worker.loop.phase_times import LOG_PREFIX, format_phase_times
    from quantjob.worker.progress import format_error_table

    if summary.already_complete:
        return "the output already holds this run's complete result; nothing was rewritten"
    phases = format_phase_times(summary.phases, summary.seconds)
    return (f"{format_error_table(summary.errors)}\n" + (f"{LOG_PREFIX}{phases}\n" if phases else "") +
            f"{summary.num_layers} layers, {summary.samples} samples ({summary.tokens} tokens) in "
            f"{summary.seconds:.1f}s" + (f", resumed at layer {summary.resumed_from}" if summary.resumed_from else ""))
