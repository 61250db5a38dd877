"""Issue 3 benchmark: the layer-wise engine against a plain bf16 forward pass; peak RSS against depth.

``python -m bench.bench_engine`` (anchor job, several minutes) or ``--quick`` (seconds). Every run
is its own subprocess: ``quantjob quantize`` in one process with ``OMP_NUM_THREADS=--threads``; the
baseline is ``bench.forward`` (transformers, whole model loaded) with the same thread count.
Prints two tables and writes ``engine.json`` / ``engine.md`` under ``--results-dir``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.measure import RunResult
from bench.models import calibration_file, model_dir, weights_bytes
from bench.options import Workload, add_common_args, int_list, workload_from_args
from bench.report import markdown_table, mb, run_bench, say
from bench.runs import QuantizeJob, engine_seconds, run_baseline, run_quantize

TIME_TARGET = 1.5
FLAT_TARGET_MB = 150.0


def time_table(quantize: RunResult, baseline_wall_s: float, report: dict[str, float],
               batch: int) -> tuple[str, dict[str, Any]]:
    """Rows: each baseline time, the quantize wall time, and quantize / baseline."""
    q = quantize.wall_s
    batched = report["batched_decoder_s"] + report["batched_lm_head_s"]
    rows: list[tuple[str, float]] = [
        (f"bf16 forward, batches of {batch} (decoder + lm_head, compute only)", batched),
        (f"bf16 forward, batches of {batch}, decoder layers only", report["batched_decoder_s"]),
    ]
    if "batch1_decoder_s" in report:
        rows.append(("bf16 forward, one sample at a time (decoder + lm_head)",
                     report["batch1_decoder_s"] + report["batch1_lm_head_s"]))
    batch1_s = report.get("batch1_decoder_s", 0.0) + report.get("batch1_lm_head_s", 0.0)
    rows.append(("bf16 forward process: start + load + warm-up + batched pass (wall - batch-1 pass)",
                 baseline_wall_s - batch1_s))
    loop = engine_seconds(quantize)
    if loop is not None:
        rows.append(("quantjob quantize, its own loop timer as printed (no start-up/imports)", loop))
    rows.append(("quantjob quantize, whole process (start, load, calibrate, quantize, save)", q))
    table = markdown_table(["run", "wall s", "quantize / this"], [(name, s, f"{q / s:.2f}x") for name, s in rows])
    ratio = q / batched
    verdict = (f"quantize / one batched bf16 forward = {ratio:.2f}x "
               f"(target <= {TIME_TARGET}x: {'met' if ratio <= TIME_TARGET else 'NOT met'})")
    return table + "\n\n" + verdict, {"rows": [{"run": n, "wall_s": s} for n, s in rows],
                                      "quantize_wall_s": q, "ratio_vs_batched_forward": ratio,
                                      "target": TIME_TARGET, "met": ratio <= TIME_TARGET}


def memory_table(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Rows per depth: weights on disk, whole-model load peak, quantize peak."""
    table = markdown_table(
        ["layers", "weights MB", "load whole model peak RSS MB", "quantize peak RSS MB", "quantize wall s"],
        [(r["layers"], mb(r["weights_bytes"]), mb(r["load_peak_rss_bytes"]), mb(r["quantize_peak_rss_bytes"]),
          r["quantize_wall_s"]) for r in rows])
    shallow, deep = rows[0], rows[-1]
    growth = mb(deep["quantize_peak_rss_bytes"] - shallow["quantize_peak_rss_bytes"])
    below_load = all(r["quantize_peak_rss_bytes"] < r["load_peak_rss_bytes"] for r in rows)
    flat = growth <= FLAT_TARGET_MB
    lines = [(f"quantize peak at {deep['layers']} layers - at {shallow['layers']} layers = {growth:.0f} MB "
              f"(target <= {FLAT_TARGET_MB:.0f} MB: {'met' if flat else 'NOT met'})"),
             f"quantize peak below the whole-model load peak at every depth: {'yes' if below_load else 'NO'}"]
    return table + "\n\n" + "\n".join(lines), {"rows": rows, "growth_mb": growth, "flat_target_mb": FLAT_TARGET_MB,
                                               "flat_met": flat, "below_load": below_load}


def run(workload: Workload, *, depths: list[int], threads: int, batch: int, batch1: bool, quant_type: str,
        cache: Path, work: Path, timeout_s: float) -> tuple[str, dict[str, Any]]:
    shape = workload.shape
    calib = calibration_file(workload.samples, workload.seq, shape.vocab, cache=cache)
    timed_model = model_dir(shape, cache)
    say(f"baseline forward: {shape.key}, {workload.samples} x {workload.seq} tokens, {threads} threads")
    baseline, report = run_baseline(timed_model, calib, work, "forward", mode="forward", threads=threads,
                                    batch=batch, batch1=batch1, timeout_s=timeout_s)
    quantized: dict[int, RunResult] = {}
    memory_rows: list[dict[str, Any]] = []
    for layers in sorted({shape.layers, *depths}):
        model = model_dir(shape.with_layers(layers), cache)
        job = QuantizeJob(model, calib, workload.samples, workload.seq, threads=threads, quant_type=quant_type)
        say(f"quantize {layers} layers")
        quantized[layers] = run_quantize(job, work, f"quantize-L{layers}", timeout_s=timeout_s)
        say(f"  {quantized[layers].wall_s:.1f} s, peak {mb(quantized[layers].max_rss_bytes):.0f} MB")
        if layers in depths:
            say(f"load whole model, {layers} layers")
            load, _ = run_baseline(model, calib, work, f"load-L{layers}", mode="load", threads=threads,
                                   timeout_s=timeout_s)
            memory_rows.append({"layers": layers, "weights_bytes": weights_bytes(model),
                                "load_peak_rss_bytes": load.max_rss_bytes,
                                "quantize_peak_rss_bytes": quantized[layers].max_rss_bytes,
                                "quantize_wall_s": quantized[layers].wall_s})
    time_text, time_data = time_table(quantized[shape.layers], baseline.wall_s, report, batch)
    memory_text, memory_data = memory_table(memory_rows)
    header = (f"Engine benchmark: {shape.key}, {workload.samples} samples x {workload.seq} tokens, "
              f"{quant_type}, {threads} threads")
    text = f"{header}\n\n## Time ({shape.layers} layers)\n\n{time_text}\n\n## Peak RSS by depth\n\n{memory_text}"
    payload = {"shape": shape.as_dict(), "samples": workload.samples, "seq": workload.seq, "threads": threads,
               "quant_type": quant_type, "baseline": {"wall_s": baseline.wall_s,
                                            "peak_rss_bytes": baseline.max_rss_bytes, **report},
               "time": time_data, "memory": memory_data}
    return text, payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_engine", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="samples per batch of the baseline forward")
    parser.add_argument("--depths", type=int_list,
                        help="layer counts of the peak-RSS rows (default 8,16,32; --quick: 2,4)")
    parser.add_argument("--no-batch1", action="store_true", help="skip the one-sample-at-a-time baseline")
    parser.add_argument("--keep-logs", action="store_true", help="keep every run's log (printed path)")
    args = parser.parse_args(argv)
    workload = workload_from_args(args)
    depths = args.depths or ([2, 4] if args.quick else [8, 16, 32])
    return run_bench("engine", lambda work: run(workload, depths=depths, threads=args.threads, batch=args.batch,
                                                batch1=not args.no_batch1, quant_type=args.quant_type, cache=args.cache_dir,
                                                work=work, timeout_s=args.timeout),
                     keep_logs=args.keep_logs, results_dir=args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
