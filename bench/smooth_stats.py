"""Folded statistics against a second observation pass after smoothing (docs/algorithms.md).

``python -m bench.smooth_stats``: the same run twice per smoothing mode, once as quantjob runs it
(the folds map the statistics of the consumers' inputs, no second pass) and once with a new
observation pass over every calibration sample after the smoothing entry (what msModelSlim's
``linear_quant`` does); prints the mean layer error and the wall time of both. In-process, with an
in-memory saver; a 3-layer hidden-512 model with 4 outlier channels per norm, 16 x 256 tokens,
W8A8 static (sizes are options).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.models import calibration_file
from bench.report import markdown_table
from quantjob.api.check import resolve
from quantjob.api.modelslim import ModelslimConfig
from quantjob.worker import processors
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.runner import WorkerJob, run_quantization
from quantjob.worker.model.demo import build_demo_model

MODES: tuple[dict[str, Any], ...] = ({"type": "iter_smooth"}, {"type": "iter_smooth", "symmetric": False},
                                     {"type": "flex_smooth_quant"})
W8A8 = {"act": {"scope": "per_tensor", "symmetric": False}, "weight": {"scope": "per_channel"}}


class _NoSaver:
    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def committed_layers(self) -> int:
        return 0

    def save(self, _out: Any) -> None:
        pass

    def write_json(self, _name: str, _data: Any) -> None:
        pass

    def finish(self, _tensors: Any) -> None:
        pass

    def abort(self) -> None:
        pass


def _run(model: Path, calib: Path, samples: int, seq: int, smooth: dict[str, Any], second_pass: bool,
         work: Path) -> tuple[float, float]:
    config = resolve(ModelslimConfig.model_validate({"spec": {"process": [smooth, {"type": "linear_quant",
                                                                                  "qconfig": W8A8}]}}), 1).config
    assert config is not None
    smoothing = type(config.spec.process[0])  # the worker keys its handlers by config class
    original = processors.HANDLERS[smoothing]
    if second_pass:
        def apply(entry: Any, ctx: Any) -> None:
            original.apply(entry, ctx)
            ctx.modified = True  # the loop then observes the layer again before linear_quant

        processors.HANDLERS[smoothing] = dataclasses.replace(original, apply=apply)
    try:
        job = WorkerJob(model_path=model, save_path=work / "out", config=config, calib_file=calib,
                        calib_samples=samples, max_length=seq, error_samples=8)
        started = time.perf_counter()
        summary = run_quantization(job, ProcessGroup(), torch.device("cpu"), open_saver_fn=_NoSaver)
        seconds = time.perf_counter() - started
    finally:
        processors.HANDLERS[smoothing] = original
    errors = [layer["relative_error"] for layer in summary.errors["layers"]]
    return sum(errors) / len(errors), seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smooth_stats", description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="quantjob-smooth-stats-") as tmp:
        work = Path(tmp)
        model = build_demo_model(work / "model", family="llama", num_layers=args.layers, hidden_size=args.hidden,
                                 intermediate_size=args.hidden * 11 // 4, num_heads=8, num_kv_heads=8,
                                 outlier_channels=4, vocab_size=2048, seed=0)
        calib = calibration_file(args.samples, args.seq, 2048, cache=work)
        rows = []
        for smooth in MODES:
            mapped, observed = (_run(model, calib, args.samples, args.seq, smooth, second, work)
                                for second in (False, True))
            rows.append((str(smooth), f"{mapped[0]:.5f}", f"{observed[0]:.5f}", mapped[1], observed[1]))
    print(markdown_table(["smoothing", "mean layer error, folded statistics", "... second pass",
                          "wall s, folded", "wall s, second pass"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
