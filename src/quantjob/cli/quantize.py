"""``quantjob quantize``: msModelSlim's ``msmodelslim quant`` flags, run by the layer-wise loop.

This module parses the command line: the run options' flags come from their table
(``quantjob.api.run_options``), then ``--device``, the config source and the group's timeouts.
The validated arguments go to the worker's entry point, ``quantjob.worker.main``, which checks the
config before any weight is read and returns the exit code (``quantjob.worker.entry`` says which);
bad flags exit 2 here.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from quantjob.api import exit_codes
from quantjob.api.presets import QUANT_TYPES, SUMMARIES
from quantjob.api.run_options import RunOptions, choices_of, run_options
from quantjob.cli.arguments import report_argument_errors


def msmodelslim_bool(text: str) -> bool:
    """A boolean flag value as msModelSlim takes it: ``True`` or ``False`` (any letter case)."""
    value = {"true": True, "false": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: write True or False (as msmodelslim does), "
                                         "or give the flag without a value for True")
    return value


def add_run_option_flags(parser: argparse.ArgumentParser, model: type[Any] = RunOptions,
                         after: dict[str, Any] | None = None) -> None:
    """One ``--<name>`` flag per run option of ``model`` (``quantjob.api.run_options``); ``after``
    maps an option to a function that adds the flags that follow it (the CLI's own)."""
    for name, (field, option) in run_options(model).items():
        flag = f"--{name}"
        if field.annotation is bool and option.msmodelslim_bool:
            parser.add_argument(flag, type=msmodelslim_bool, nargs="?", const=True, default=False,
                                metavar=option.metavar, help=option.help)
        elif field.annotation is bool:
            parser.add_argument(flag, action="store_true", help=option.help)
        else:
            kind = field.annotation if field.annotation in (int, float) else None
            extra: dict[str, Any] = {"required": True} if field.is_required() else {"default": field.default}
            if kind is not None:
                extra["type"] = kind
            choices = choices_of(field.annotation)
            if choices:
                extra["choices"] = choices
            if option.metavar:
                extra["metavar"] = option.metavar
            parser.add_argument(flag, help=option.help, **extra)
        if after and name in after:
            after[name](parser)


def _device_and_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu | cpu:0,1 | npu | npu:0,1,2,3 | cuda:0,1 (default cpu)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--quant_type", help="preset: " + "; ".join(f"{name} ({SUMMARIES[name]})"
                                                                    for name in QUANT_TYPES))
    which.add_argument("--config_path", help="a modelslim_v1 YAML config")


def register(subparsers: argparse._SubParsersAction) -> None:
    # "quant" is msmodelslim's name for this command, so its command lines run with only the program
    # name changed: `msmodelslim quant ...` -> `quantjob quant ...` (or `quantjob quantize ...`).
    parser = subparsers.add_parser(
        "quantize", aliases=["quant"], help="quantize a model layer by layer (msmodelslim quant flags)",
        description="Quantize a Hugging Face model directory one decoder layer at a time. Takes "
                    "msmodelslim quant's command line as it is.")
    add_run_option_flags(parser, after={"save_path": _device_and_config})
    parser.add_argument("--rendezvous_timeout", type=float, default=600.0, metavar="SECONDS",
                        help="how long a rank waits for rank 0 to answer (default 600)")
    parser.add_argument("--collective_timeout", type=float, metavar="SECONDS",
                        help="how long a rank waits for the others in a collective before the group stops, "
                             "naming the stuck rank (default: $QUANTJOB_COLLECTIVE_TIMEOUT, else 600)")
    parser.set_defaults(run=run)


def run(namespace: argparse.Namespace) -> int:
    from quantjob.worker import main
    from quantjob.worker.entry import WorkerArgs

    values = {k: v for k, v in vars(namespace).items() if k in WorkerArgs.model_fields}
    try:
        args = WorkerArgs.model_validate(values)
    except ValidationError as error:
        report_argument_errors("quantjob", error)
        return exit_codes.USAGE
    return main(args)
