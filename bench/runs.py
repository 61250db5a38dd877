"""The measured jobs: ``quantjob quantize`` through the CLI, and the transformers baseline children.

Each job runs in its own subprocess (``run_measured``), so its wall time includes interpreter
start-up, imports and model loading, and its peak RSS is its own.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.forward import parse_result
from bench.measure import RunResult, run_measured, thread_env
from quantjob.worker.loop.phase_times import LOG_PREFIX, parse_phase_times

REPO_ROOT = Path(__file__).resolve().parent.parent
# the summary line ``quantjob quantize`` prints last: "16 layers, 64 samples (32768 tokens) in 81.2s"
_ENGINE_SUMMARY = re.compile(r"\d+ layers, \d+ samples \(\d+ tokens\) in ([0-9.]+)s\s*$")


def _log_lines(result: RunResult) -> list[str]:
    """The lines the run printed (none when it kept no log)."""
    if result.log_path is None:
        return []
    return result.log_path.read_text(encoding="utf-8", errors="replace").splitlines()


def engine_seconds(result: RunResult) -> float | None:
    """The loop time ``quantjob quantize`` reported itself (rank 0's), None when it printed none."""
    return _summary_seconds(_log_lines(result))


def _summary_seconds(lines: list[str]) -> float | None:
    for line in reversed(lines):
        match = _ENGINE_SUMMARY.search(line)
        if match:
            return float(match.group(1))
    return None


# the progress line after each layer: "layer 3/16 done (relative output error 2.639e-02, 13.4s)"
_LAYER_DONE = re.compile(r"layer (\d+)/\d+ done \(.*, ([0-9.]+)s(?:, ETA [^)]*)?\)\s*$")  # ETA after all but the last


def per_layer_seconds(result: RunResult) -> float | None:
    """Seconds per decoder layer after the first, from the progress lines' running times: the
    slope between the first and the last layer, so start-up, the first layer's warm-up and the
    finish are left out. None with fewer than two layers reported."""
    done: dict[int, float] = {}
    for line in _log_lines(result):
        match = _LAYER_DONE.search(line)
        if match:
            done[int(match.group(1))] = float(match.group(2))
    if len(done) < 2:
        return None
    first, last = min(done), max(done)
    return (done[last] - done[first]) / (last - first)


def phase_seconds(result: RunResult) -> dict[str, float] | None:
    """Rank 0's seconds per phase of the loop (the line ``quantjob quantize`` prints before its
    summary), with ``outside the runner``: the wall time before and after the loop's own clock
    (interpreter, imports, the launcher). None when the run printed no such line."""
    lines = _log_lines(result)
    seconds = _summary_seconds(lines)
    for line in reversed(lines):
        at = line.find(LOG_PREFIX)
        if at >= 0 and seconds is not None:
            found = parse_phase_times(line[at + len(LOG_PREFIX):])
            found["outside the runner"] = result.wall_s - seconds
            return found
    return None


@dataclass(frozen=True)
class QuantizeJob:
    """One ``quantjob quantize`` invocation of the benchmark."""

    model: Path
    calib: Path
    samples: int
    seq: int
    ranks: int = 1
    threads: int = 2
    quant_type: str = "w8a8"
    config_path: Path | None = None  # a modelslim_v1 config instead of ``quant_type``

    def argv(self, save_path: Path) -> list[str]:
        device = "cpu" if self.ranks == 1 else "cpu:" + ",".join(str(i) for i in range(self.ranks))
        return [sys.executable, "-m", "quantjob.cli", "quantize",
                "--model_path", str(self.model), "--save_path", str(save_path), "--device", device,
                *(["--config_path", str(self.config_path)] if self.config_path else ["--quant_type", self.quant_type]),
                "--calib_file", str(self.calib),
                "--calib_samples", str(self.samples), "--max_length", str(self.seq), "--overwrite"]


def run_quantize(job: QuantizeJob, work: Path, name: str, *, timeout_s: float) -> RunResult:
    """Run ``job`` (OMP_NUM_THREADS = ``job.threads`` in every rank); its output is deleted afterwards."""
    save_path = work / f"{name}-out"
    shutil.rmtree(save_path, ignore_errors=True)
    try:
        return run_measured(job.argv(save_path), env=thread_env(job.threads), log_path=work / f"{name}.log",
                            cwd=REPO_ROOT, timeout_s=timeout_s)
    finally:
        shutil.rmtree(save_path, ignore_errors=True)


def run_baseline(model: Path, calib: Path, work: Path, name: str, *, mode: str, threads: int, batch: int = 8,
                 batch1: bool = False, lm_head: bool = True, as_quantize: tuple[int, int] | None = None,
                 timeout_s: float) -> tuple[RunResult, dict[str, float]]:
    """Run ``python -m bench.forward`` (transformers, whole model) and return its measurement and report;
    ``as_quantize``: (samples, max_length) to read the calibration as ``quantjob quantize`` does."""
    argv: Sequence[str] = [sys.executable, "-m", "bench.forward", "--model", str(model), "--calib", str(calib),
                           "--mode", mode, "--batch", str(batch), *(["--batch1"] if batch1 else []),
                           *([] if lm_head else ["--no-lm-head"]),
                           *(["--samples", str(as_quantize[0]), "--max-length", str(as_quantize[1])]
                             if as_quantize else [])]
    result = run_measured(argv, env=thread_env(threads), log_path=work / f"{name}.log", cwd=REPO_ROOT,
                          timeout_s=timeout_s)
    assert result.log_path is not None
    return result, parse_result(result.log_path.read_text(encoding="utf-8", errors="replace"))
