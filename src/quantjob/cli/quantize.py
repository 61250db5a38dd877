"""``quantjob quantize``: msModelSlim's ``msmodelslim quant`` flags, run by the layer-wise loop.

The config is checked (``quantjob.api.check.resolve``) before any weight is read: problems are
printed as ``path: message`` and errors exit 2. Expected bad input (missing files, corrupt
weights, empty calibration, an occupied output) prints one ``quantjob: error: ...`` line and
exits 1. With several devices and no ``RANK`` in the environment, the local launcher starts one
process per device, each re-running this command as one rank.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from quantjob.api.check import resolve
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.presets import QUANT_TYPES, preset
from quantjob.api.problems import from_validation_error, has_errors
from quantjob.api.run_options import RunOptions


class QuantizeArgs(RunOptions):
    """The command line, validated: the run's options plus the device and the config source."""

    device: str = "cpu"
    quant_type: str | None = None
    config_path: Path | None = None
    rendezvous_timeout: float = Field(600.0, gt=0)
    collective_timeout: float = Field(1800.0, gt=0)

    @model_validator(mode="after")
    def _one_config(self) -> QuantizeArgs:
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


def msmodelslim_bool(text: str) -> bool:
    """A boolean flag value as msModelSlim takes it: ``True`` or ``False`` (any letter case)."""
    value = {"true": True, "false": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: write True or False (as msmodelslim does), "
                                         "or give the flag without a value for True")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    # "quant" is msmodelslim's name for this command, so its command lines run with only the program
    # name changed: `msmodelslim quant ...` -> `quantjob quant ...` (or `quantjob quantize ...`).
    parser = subparsers.add_parser(
        "quantize", aliases=["quant"], help="quantize a model layer by layer (msmodelslim quant flags)",
        description="Quantize a Hugging Face model directory one decoder layer at a time. Takes "
                    "msmodelslim quant's command line as it is.")
    parser.add_argument("--model_path", required=True, help="model directory (config.json, safetensors, tokenizer)")
    parser.add_argument("--save_path", required=True, help="output directory")
    parser.add_argument("--device", default="cpu", help="cpu | cpu:0,1 | npu | npu:0,1,2,3 | cuda:0,1 (default cpu)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--quant_type", help=f"preset: {', '.join(QUANT_TYPES)}")
    which.add_argument("--config_path", help="a modelslim_v1 YAML config")
    parser.add_argument("--calib_file", help="jsonl ({\"text\"} or {\"input_ids\"} lines) or plain text; "
                                             "default: the built-in calibration set")
    parser.add_argument("--calib_samples", type=int, default=128, help="samples to use (default 128)")
    parser.add_argument("--max_length", type=int, default=2048, help="tokens per sample at most (default 2048)")
    parser.add_argument("--model_type", help="override config.json's model_type (e.g. Qwen2.5-7B, llama)")
    parser.add_argument("--trust_remote_code", type=msmodelslim_bool, nargs="?", const=True, default=False,
                        metavar="True|False",
                        help="allow the model's own Python code: True or False as in msmodelslim, or the bare flag "
                             "for True (default False)")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete output at --save_path")
    parser.add_argument("--next_layer_input", choices=("float", "quantized"), default="float",
                        help="feed each layer the float (default) or the quantized outputs of the previous one")
    parser.add_argument("--error_samples", type=int, default=8,
                        help="samples for the per-layer quantization error table (default 8)")
    parser.add_argument("--rendezvous_timeout", type=float, default=600.0, metavar="SECONDS",
                        help="how long a rank waits for rank 0 to answer (default 600)")
    parser.add_argument("--collective_timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="a collective (or a peer) that takes longer fails the run (default 1800)")
    parser.set_defaults(run=run)


TERMINATION_LOG = Path("/dev/termination-log")


def _fail(message: str, code: int = 1) -> int:
    """Report an expected failure: one line on stderr and, in a pod, the termination message
    (the operator copies it into the QuantJob's Failed condition); returns ``code``."""
    print(f"quantjob: error: {message}", file=sys.stderr)
    if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        try:
            TERMINATION_LOG.write_text(message[:4000], encoding="utf-8")
        except OSError:
            pass
    return code


def _load_config(args: QuantizeArgs) -> ModelslimConfig | list[str]:
    if args.quant_type is not None:
        return preset(args.quant_type)
    assert args.config_path is not None
    try:
        data = yaml.safe_load(args.config_path.read_text(encoding="utf-8"))
    except OSError as error:
        return [f"{args.config_path}: cannot read ({error.strerror}); fix --config_path"]
    except yaml.YAMLError as error:
        return [f"{args.config_path}: not valid YAML ({str(error).splitlines()[0]})"]
    try:
        return ModelslimConfig.model_validate(data)
    except ValidationError as error:
        return [f"{args.config_path}: {problem}" for problem in from_validation_error(error)]


def _calib_file(args: QuantizeArgs, config: ModelslimConfig) -> Path | None:
    """``--calib_file``, else the config's ``dataset`` when it names an existing file."""
    dataset = config.calibration_dataset()
    if args.calib_file is not None or not dataset:
        return args.calib_file
    base = args.config_path.parent if args.config_path else Path.cwd()
    for candidate in (Path(dataset), base / dataset):
        if candidate.is_file():
            return candidate
    print(f"quantjob: warning: dataset {dataset!r} in the config is not a file here; using the built-in "
          "calibration set (pass --calib_file to choose one)", file=sys.stderr)
    return None


def run(namespace: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(namespace).items() if k in QuantizeArgs.model_fields}
    try:
        args = QuantizeArgs.model_validate(values)
    except ValidationError as error:
        for item in error.errors(include_url=False):
            where = ".".join(str(p) for p in item["loc"])
            print(f"quantjob: error: {'--' + where + ': ' if where else ''}"
                  f"{str(item['msg']).removeprefix('Value error, ')}", file=sys.stderr)
        return 2

    import logging

    from quantjob.worker import device as devices
    from quantjob.worker.adapters import adapter_for
    from quantjob.worker.errors import QuantJobError
    from quantjob.worker.model_config import read_model_config

    try:
        spec = devices.parse_devices(args.device)
    except ValueError as error:
        print(f"quantjob: error: {error}", file=sys.stderr)
        return 2
    loaded = _load_config(args)
    if isinstance(loaded, list):
        for line in loaded:
            print(line, file=sys.stderr)
        return 2
    try:
        model_config = read_model_config(args.model_path)
        adapter_for(model_config, args.model_type, config_file=str(args.model_path / "config.json"))
    except QuantJobError as error:
        return _fail(str(error))
    # one rank of a group (a Job pod, or a process of the local launcher): the group's size counts
    from quantjob.worker.group_env import read_group_env

    try:
        found = read_group_env()
    except ValueError as error:  # a pod's environment: the message goes to the termination log too
        return _fail(str(error), code=2)
    in_group = found.world_size > 1 or any(os.environ.get(name, "").strip()
                                           for name in ("RANK", "JOB_COMPLETION_INDEX"))
    world_size = found.world_size if in_group else spec.count
    resolution = resolve(loaded, devices=world_size, model_config=model_config, prefix="")
    for problem in resolution.problems:
        print(str(problem), file=sys.stderr)
    if has_errors(resolution.problems) or resolution.config is None:
        return 2

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from quantjob.worker.launcher import die_with_launcher, launch

    if spec.count > 1 and not in_group:
        try:
            return launch(args.argv(), spec)
        except ValueError as error:  # the devices do not fit the visible ones: nothing started
            return _fail(str(error), code=2)
    die_with_launcher()  # a rank of the local launcher (no-op otherwise) goes when the launcher goes

    from quantjob.worker.distributed import (
        close_group,
        init_group_from_env,
        local_device_index,
    )
    from quantjob.worker.progress import default_progress
    from quantjob.worker.runner import WorkerJob, run_quantization

    job = WorkerJob(model_path=args.model_path, save_path=args.save_path, config=resolution.config,
                    calib_file=_calib_file(args, resolution.config), calib_samples=args.calib_samples,
                    max_length=args.max_length, model_type=args.model_type,
                    trust_remote_code=args.trust_remote_code, overwrite=args.overwrite,
                    next_layer_input=args.next_layer_input, error_samples=args.error_samples)
    try:
        group = init_group_from_env(spec.type, timeout_s=args.rendezvous_timeout,
                                    collective_timeout_s=args.collective_timeout)
        device = devices.torch_device(spec.type, local_device_index(spec, group))
    except (ValueError, RuntimeError, TimeoutError) as error:
        return _fail(str(error))
    try:
        summary = run_quantization(job, group, device, default_progress(group))
    except QuantJobError as error:
        return _fail(str(error))
    finally:
        close_group()
    if group.is_main:
        print(_summary_text(summary))
    return 0


def _summary_text(summary: Any) -> str:
    from quantjob.worker.progress import format_error_table

    if summary.errors.get("already_complete"):
        return "the output already holds this run's complete result; nothing was rewritten"
    return (f"{format_error_table(summary.errors)}\n"
            f"{summary.num_layers} layers, {summary.samples} samples ({summary.tokens} tokens) in "
            f"{summary.seconds:.1f}s" + (f", resumed at layer {summary.resumed_from}" if summary.resumed_from else ""))
