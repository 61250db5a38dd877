"""Command-line options shared by the benchmarks: the model shape, the calibration size, where to write."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from bench.models import ANCHOR, CACHE_DIR, QUICK, ModelShape
from bench.report import RESULTS_DIR

ANCHOR_SAMPLES, ANCHOR_SEQ = 64, 512
QUICK_SAMPLES, QUICK_SEQ = 8, 32


@dataclass(frozen=True)
class Workload:
    """The model and calibration set of one benchmark run."""

    shape: ModelShape
    samples: int
    seq: int


def add_common_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("job size (defaults: the issue's anchor job; --quick: a tiny smoke job)")
    group.add_argument("--quick", action="store_true",
                       help=f"tiny job: {QUICK.layers} layers, hidden {QUICK.hidden}, vocab {QUICK.vocab}, "
                            f"{QUICK_SAMPLES} samples x {QUICK_SEQ} tokens")
    group.add_argument("--layers", type=int, help=f"decoder layers of the timed model (anchor {ANCHOR.layers})")
    group.add_argument("--hidden", type=int, help=f"hidden size (anchor {ANCHOR.hidden})")
    group.add_argument("--intermediate", type=int, help=f"MLP size (anchor {ANCHOR.intermediate})")
    group.add_argument("--vocab", type=int, help=f"vocabulary (anchor {ANCHOR.vocab})")
    group.add_argument("--heads", type=int, help=f"attention heads (anchor {ANCHOR.heads})")
    group.add_argument("--kv-heads", type=int, help=f"key/value heads (anchor {ANCHOR.kv_heads})")
    group.add_argument("--samples", type=int, help=f"calibration samples (anchor {ANCHOR_SAMPLES})")
    group.add_argument("--seq", type=int, help=f"tokens per calibration sample (anchor {ANCHOR_SEQ})")
    parser.add_argument("--quant-type", default="w8a8", help="quantjob quantize --quant_type (default w8a8)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON and table go")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where built models are kept")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per measured run")


def workload_from_args(args: argparse.Namespace) -> Workload:
    base = QUICK if args.quick else ANCHOR
    overrides = {name: getattr(args, option) for name, option in
                 (("layers", "layers"), ("hidden", "hidden"), ("intermediate", "intermediate"),
                  ("vocab", "vocab"), ("heads", "heads"), ("kv_heads", "kv_heads"))
                 if getattr(args, option) is not None}
    shape = replace(base, **overrides)
    if shape.hidden % shape.heads or shape.heads % shape.kv_heads:
        raise SystemExit(f"--hidden {shape.hidden} must be a multiple of --heads {shape.heads}, "
                         f"and --heads a multiple of --kv-heads {shape.kv_heads}")
    samples = args.samples or (QUICK_SAMPLES if args.quick else ANCHOR_SAMPLES)
    seq = args.seq or (QUICK_SEQ if args.quick else ANCHOR_SEQ)
    return Workload(shape, samples, seq)


def int_list(text: str) -> list[int]:
    """``"8,16,32"`` -> ``[8, 16, 32]`` (an argparse type)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 8,16,32)")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one positive integer (e.g. 8,16,32)")
    return values
