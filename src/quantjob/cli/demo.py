"""``quantjob demo``: build a small demo model and quantize it on two local CPU ranks.

The model comes from the config shipped in the package (``quantjob/worker/data/demo_model.json``):
random weights with a fixed seed and activation outliers, and a tokenizer trained on text the
project ships. It is then quantized by ``quantjob quantize`` with exactly the flags a user
would type, so the demo exercises the real path (launcher, process group, loop, saver).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from quantjob.api.presets import QUANT_TYPES

DEFAULT_OUTPUT = "quantjob-demo"
DEFAULT_DEVICES = "cpu:0,1"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="build a small demo model and quantize it with two local processes",
        description="Build a small random-weight model (shipped config, fixed seed, activation outliers) "
                    "and quantize it data-parallel on this machine, printing progress, the per-layer "
                    "error table and where the output is.")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, type=Path,
                        help=f"working directory for the model, calibration and output (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--devices", "--device", dest="devices", default=DEFAULT_DEVICES,
                        help=f"devices to quantize on, one process each (default: {DEFAULT_DEVICES})")
    parser.add_argument("--layers", type=int, default=None,
                        help="number of decoder layers (default: the shipped config's)")
    parser.add_argument("--quant_type", default="w8a8", choices=QUANT_TYPES,
                        help="preset to quantize with (default: w8a8)")
    parser.set_defaults(run=run)


def shipped_demo_config() -> dict[str, Any]:
    """The demo model's shape, as shipped in ``quantjob/worker/data/demo_model.json``."""
    text = resources.files("quantjob.worker").joinpath("data/demo_model.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def quantize_argv(model: Path, calibration: Path, save: Path, devices: str, quant_type: str) -> list[str]:
    """The ``quantjob quantize`` command line the demo runs (printed, so users can re-run it)."""
    return ["quantize", "--model_path", str(model), "--save_path", str(save), "--device", devices,
            "--quant_type", quant_type, "--calib_file", str(calibration), "--overwrite"]


def build_inputs(output: Path, layers: int | None) -> tuple[Path, Path]:
    """Write the demo model and its calibration file under ``output``; return their paths."""
    import torch

    from quantjob.worker.model.demo import build_demo_model, write_calibration_jsonl

    shape = shipped_demo_config()
    model = build_demo_model(
        output / "model", family=shape["family"],
        num_layers=layers if layers is not None else shape["num_layers"],
        hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_heads=shape["num_heads"], num_kv_heads=shape["num_kv_heads"],
        dtype=getattr(torch, shape["dtype"]), seed=shape["seed"],
        outlier_channels=shape["outlier_channels"], outlier_scale=shape["outlier_scale"])
    calibration = write_calibration_jsonl(
        output / "calibration.jsonl", shape["calibration_samples"], seed=shape["seed"],
        min_words=shape["calibration_min_words"], max_words=shape["calibration_max_words"])
    return model, calibration


def run(args: argparse.Namespace) -> int:
    from quantjob.cli import main
    from quantjob.worker.group.device import parse_devices

    if args.layers is not None and args.layers < 1:
        print(f"quantjob demo: --layers {args.layers} must be at least 1", file=sys.stderr)
        return 2
    try:
        parse_devices(args.devices)
    except ValueError as error:
        print(f"quantjob demo: {error}", file=sys.stderr)
        return 2
    output: Path = args.output.resolve()
    started = time.monotonic()
    model, calibration = build_inputs(output, args.layers)
    save = output / f"model-{args.quant_type}"
    argv = quantize_argv(model, calibration, save, args.devices, args.quant_type)
    print(f"quantjob demo: built a demo model in {model} ({time.monotonic() - started:.1f} s)", flush=True)
    print(f"quantjob demo: running: quantjob {' '.join(argv)}", flush=True)
    code = main(argv)
    elapsed = time.monotonic() - started
    if code != 0:
        print(f"quantjob demo: quantization failed (exit code {code}) after {elapsed:.1f} s", file=sys.stderr)
        return code
    print(f"quantjob demo: done in {elapsed:.1f} s; quantized model: {save}", flush=True)
    return 0
