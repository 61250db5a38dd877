"""Issue 4 benchmark: data-parallel speed-up, peak RSS per rank, and scaling with calibration size.

``python -m bench.bench_dp`` (anchor job) or ``--quick``. Every rank runs with ``OMP_NUM_THREADS=1``
(one rank stands for one device); ranks are started by ``quantjob quantize --device cpu:0,1,...``.
The ranks table runs every configuration ``--repeat`` times, interleaved (1 rank, 2 ranks, ...,
then again), and reports the median wall time: on a shared VM one run can be a few percent off.
Prints two tables and writes ``dp.json`` / ``dp.md`` under ``--results-dir``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.measure import RunResult
from bench.models import calibration_file, model_dir
from bench.options import Workload, add_common_args, int_list, workload_from_args
from bench.report import markdown_table, mb, run_bench, say
from bench.runs import QuantizeJob, engine_seconds, run_quantize

SPEEDUP_TARGET = 1.8


Runs = dict[tuple[int, int], list[RunResult]]


def median_run(results: list[RunResult]) -> RunResult:
    """The run with the median wall time (the lower middle one for an even count)."""
    ordered = sorted(results, key=lambda r: r.wall_s)
    return ordered[(len(ordered) - 1) // 2]


def _rank_row(runs: Runs, samples: int, ranks: int) -> dict[str, Any]:
    results = runs[(samples, ranks)]
    result, single = median_run(results), median_run(runs[(samples, 1)])
    peaks: dict[int, int] = {}
    for run in results:  # the highest peak of every rank over the repeats
        for rank, peak in run.rank_peaks().items():
            peaks[rank] = max(peaks.get(rank, 0), peak)
    return {"samples": samples, "ranks": ranks, "wall_s": result.wall_s,
            "walls_s": [r.wall_s for r in results],
            "speedup": single.wall_s / result.wall_s,
            "peak_rss_per_rank_bytes": max(r.max_rank_peak_bytes() for r in results),
            "rank_peaks_bytes": {str(r): b for r, b in sorted(peaks.items())},
            "tree_max_rss_bytes": max(r.max_rss_bytes for r in results),
            "launcher_peak_rss_bytes": max((p.peak_rss_bytes for r in results for p in r.processes if p.pid == r.pid),
                                           default=None),
            "engine_loop_s": engine_seconds(result)}


def ranks_table(rows: list[dict[str, Any]], cores: int) -> tuple[str, dict[str, Any]]:
    table = markdown_table(
        ["ranks", "wall s (median)", "every run s", "speed-up vs 1 rank", "loop s (as printed)",
         "peak RSS per rank MB (max over ranks)", "each rank MB"],
        [(r["ranks"], r["wall_s"], " ".join(f"{w:.1f}" for w in r["walls_s"]), f"{r['speedup']:.2f}x",
          r["engine_loop_s"], mb(r["peak_rss_per_rank_bytes"]),
          " ".join(f"{mb(b):.0f}" for b in r["rank_peaks_bytes"].values()) or "-") for r in rows])
    by_ranks = {r["ranks"]: r for r in rows}
    lines: list[str] = []
    verdicts: dict[str, Any] = {}
    if 2 in by_ranks and 1 in by_ranks:
        speedup = by_ranks[2]["speedup"]
        memory_ok = by_ranks[2]["peak_rss_per_rank_bytes"] <= by_ranks[1]["peak_rss_per_rank_bytes"]
        verdicts = {"speedup_2": speedup, "speedup_target": SPEEDUP_TARGET, "speedup_met": speedup >= SPEEDUP_TARGET,
                    "rank_peak_at_most_single": memory_ok}
        lines += [(f"speed-up of 2 ranks = {speedup:.2f}x "
                   f"(target >= {SPEEDUP_TARGET}x: {'met' if speedup >= SPEEDUP_TARGET else 'NOT met'})"),
                  f"peak RSS per rank with 2 ranks <= 1 rank: {'yes' if memory_ok else 'NO'}"]
    oversubscribed = [r["ranks"] for r in rows if r["ranks"] > cores]
    if oversubscribed:
        lines.append(f"{', '.join(map(str, oversubscribed))} ranks run on {cores} cores: "
                     "their time shows the cost of the collectives and of sharing cores, not a speed-up")
    return table + ("\n\n" + "\n".join(lines) if lines else ""), {"rows": rows, **verdicts}


def scaling_table(runs: Runs, samples: list[int],
                  ranks: list[int]) -> tuple[str, list[dict[str, Any]]]:
    headers = ["samples", *[f"{r} rank{'s' if r > 1 else ''} wall s" for r in ranks],
               *[f"speed-up {r} ranks" for r in ranks if r > 1]]
    rows, data = [], []
    for n in samples:
        walls = [median_run(runs[(n, r)]).wall_s for r in ranks]
        speedups = [f"{walls[0] / wall:.2f}x" for r, wall in zip(ranks, walls) if r > 1]
        rows.append((n, *walls, *speedups))
        data.append({"samples": n, "wall_s": {str(r): w for r, w in zip(ranks, walls)}})
    return markdown_table(headers, rows), data


def run(workload: Workload, *, ranks: list[int], scaling_samples: list[int], scaling_ranks: list[int],
        repeat: int, quant_type: str, cache: Path, work: Path, timeout_s: float) -> tuple[str, dict[str, Any]]:
    shape = workload.shape
    model = model_dir(shape, cache)
    ranks = sorted({1, *ranks})
    scaling_ranks = sorted({1, *scaling_ranks})
    wanted = list(dict.fromkeys([(workload.samples, r) for r in ranks]
                                + [(n, r) for n in scaling_samples for r in scaling_ranks]))
    runs: Runs = {}
    for attempt in range(repeat):  # interleaved, so slow phases of the machine hit every configuration
        for samples, world in wanted:
            if attempt and samples != workload.samples:
                continue  # the scaling rows run once
            calib = calibration_file(samples, workload.seq, shape.vocab, cache=cache)
            job = QuantizeJob(model, calib, samples, workload.seq, ranks=world, threads=1, quant_type=quant_type)
            say(f"quantize {shape.layers} layers, {samples} samples, {world} rank(s), OMP_NUM_THREADS=1, "
                f"run {attempt + 1}")
            result = run_quantize(job, work, f"quantize-n{samples}-r{world}-{attempt + 1}", timeout_s=timeout_s)
            runs.setdefault((samples, world), []).append(result)
            say(f"  {result.wall_s:.1f} s")
    cores = os.cpu_count() or 1
    ranks_text, ranks_data = ranks_table([_rank_row(runs, workload.samples, r) for r in ranks], cores)
    scaling_text, scaling_data = scaling_table(runs, sorted(set(scaling_samples)), scaling_ranks)
    header = (f"Data-parallel benchmark: {shape.key}, {workload.seq} tokens per sample, {quant_type}, "
              f"OMP_NUM_THREADS=1 per rank, {cores} cores, ranks table: median of {repeat} interleaved runs")
    text = (f"{header}\n\n## Ranks ({workload.samples} samples)\n\n{ranks_text}\n\n"
            f"## Time against calibration samples\n\n{scaling_text}")
    payload = {"shape": shape.as_dict(), "samples": workload.samples, "seq": workload.seq, "quant_type": quant_type,
               "cores": cores, "repeat": repeat, "ranks": ranks_data, "scaling": scaling_data}
    return text, payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dp", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--ranks", type=int_list, default=[1, 2, 4],
                        help="rank counts of the speed-up table (default 1,2,4)")
    parser.add_argument("--scaling-samples", type=int_list,
                        help="calibration sample counts of the scaling table (default 16,64,256; --quick: 4,8)")
    parser.add_argument("--scaling-ranks", type=int_list, default=[1, 2],
                        help="rank counts of the scaling table (default 1,2)")
    parser.add_argument("--repeat", type=int,
                        help="runs of each ranks-table configuration, median reported (default 3; --quick: 1)")
    parser.add_argument("--keep-logs", action="store_true", help="keep every run's log (printed path)")
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    workload = workload_from_args(args)
    scaling_samples = args.scaling_samples or ([4, 8] if args.quick else [16, 64, 256])
    return run_bench("dp", lambda work: run(workload, ranks=args.ranks, scaling_samples=scaling_samples,
                                            scaling_ranks=args.scaling_ranks, repeat=repeat,
                                            quant_type=args.quant_type, cache=args.cache_dir,
                                            work=work, timeout_s=args.timeout),
                     keep_logs=args.keep_logs, results_dir=args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
