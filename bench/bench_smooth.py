"""Issue 9 benchmark: smoothing (iter_smooth, flex_smooth_quant) and ssz weights on the anchor job,
against minmax alone and against llm-compressor's SmoothQuant, in one run.

``python -m bench.bench_smooth`` (anchor job: 16 layers, hidden 1024, 4 outlier channels per norm,
64 x 512 tokens, W8A8 static) or ``--quick``. Each row is its own measured subprocess
(``quantjob quantize --config_path ...``, or llm-compressor in its own venv, ``bench/llmc/``) with
``--threads`` threads; the data-parallel rows use one thread per rank. Columns:

- mean relative layer-output error: the mean over layers of ``quant_errors.json`` (float inputs,
  the first ``--error-samples`` calibration samples); for llm-compressor the same figure recomputed
  from its saved files with the same code (``bench/layer_errors.py``);
- end-to-end error: the relative error of the last layer's output when the saved quantized layers
  run one after the other, on ``--heldout`` samples that were not used for calibration;
- wall time and peak RSS of the process (per rank for several ranks).

The two data-parallel rows (1 rank x 1 thread, 2 ranks x 1 thread) run ``--pairs`` times, one after
the other in turn, as ``bench_dp`` does: this VM's speed drifts by several percent from one minute
to the next, so one pair read 1.55x and another 1.74x for the same code. Their wall time is the median
run's, and the speed-up target reads the median of the pairs' ratios. After each pair
``bench.contention`` measures how much two busy cores slow each other on this machine, outside
quantjob (a plain decoder layer alone and as one of two processes), and the target line prints the
best speed-up two ranks could reach with that slowdown and the 1-rank run's fixed cost
(``--no-contention`` leaves it out).

Every run's output directory is kept under ``--outputs`` (default ``bench/.cache/smooth-outputs``)
and ``SAVED_COLUMNS`` adds columns computed from a kept quantjob output (see ``add_saved_column``).
Prints the tables and the targets; writes ``smooth.json`` / ``smooth.md`` under ``--results-dir``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.bench_dp import median_run
from bench.contention import best_speedup
from bench.contention import measure as measure_contention
from bench.measure import RunResult, run_measured, thread_env
from bench.models import CACHE_DIR, calibration_file, model_dir, read_calibration_ids
from bench.options import Workload, add_common_args, workload_from_args
from bench.report import markdown_table, mb, run_bench, say
from bench.runs import REPO_ROOT, engine_seconds, per_layer_seconds, phase_seconds

OUTPUTS_DIR = CACHE_DIR / "smooth-outputs"
W8A8_STATIC = {"act": {"scope": "per_tensor", "dtype": "int8", "symmetric": False, "method": "minmax"},
               "weight": {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}}
TARGETS = {"flex_over_minmax_time": 1.5, "llmc_over_flex_time": 3.0, "two_rank_speedup": 1.8}

# Columns computed from a kept quantjob output directory: name -> fn(output dir, model dir, the
# error samples' token ids (the first --error-samples calibration samples, as quant_errors.json),
# the held-out samples' ids) -> a number. Add one with ``add_saved_column``, e.g. the mean layer
# error recomputed with vllm-ascend's W8A8 arithmetic (quantjob.worker.readers.ascend_forward).
SavedColumn = Callable[[Path, Path, list[list[int]], list[list[int]]], float]
SAVED_COLUMNS: dict[str, SavedColumn] = {}


def add_saved_column(name: str, column: SavedColumn) -> None:
    SAVED_COLUMNS[name] = column


def _engine_mean_error(save: Path, model: Path, in_sample: list[list[int]], _held: list[list[int]]) -> float:
    from bench.layer_errors import engine_layer_errors

    return mean(engine_layer_errors(model, in_sample, save))


# the second figure: the same mean layer error from the saved files, computed as vllm-ascend would
add_saved_column("mean layer error, vllm-ascend arithmetic", _engine_mean_error)


@dataclass(frozen=True)
class Variant:
    """One quantjob run: processors placed before the W8A8 static linear_quant, and how it runs."""

    name: str
    smoothing: tuple[dict[str, Any], ...] = ()
    weight_method: str = "minmax"
    ranks: int = 1
    threads: int | None = None   # None: --threads
    next_layer_input: str = "float"
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        qconfig = json.loads(json.dumps(W8A8_STATIC))
        qconfig["weight"]["method"] = self.weight_method
        process = [*self.smoothing, {"type": "linear_quant", "qconfig": qconfig, "include": ["*"]}]
        return {"apiversion": "modelslim_v1", "metadata": {"config_id": f"bench-{self.name}"},
                "spec": {"process": process, "save": [{"type": "ascendv1_saver"}]}}


ITER = ({"type": "iter_smooth"},)
FLEX = ({"type": "flex_smooth_quant"},)
# issue 23: quantjob's wider set of smoothing sites (ov and up-down as well as msModelSlim's norm-linear)
ITER_ALL = ({"type": "iter_smooth", "ext": {"sites": "all"}},)
FLEX_ALL = ({"type": "flex_smooth_quant", "ext": {"sites": "all"}},)
VARIANTS = (
    Variant("minmax alone"),
    Variant("iter_smooth", ITER),
    Variant("flex_smooth_quant", FLEX),
    Variant("flex_smooth_quant + ssz", FLEX, weight_method="ssz"),
    Variant("iter_smooth, all sites", ITER_ALL),
    Variant("flex_smooth_quant, all sites", FLEX_ALL),
    Variant("minmax alone, quantized propagation", next_layer_input="quantized"),
    Variant("iter_smooth, quantized propagation", ITER, next_layer_input="quantized"),
    Variant("flex_smooth_quant, quantized propagation", FLEX, next_layer_input="quantized"),
    Variant("flex_smooth_quant, 1 rank x 1 thread", FLEX, threads=1),
    Variant("flex_smooth_quant, 2 ranks x 1 thread", FLEX, ranks=2, threads=1),
)
LLMC_NAME = "llm-compressor SmoothQuant(0.8) + W8A8 static"
PAIR = ("flex_smooth_quant, 1 rank x 1 thread", "flex_smooth_quant, 2 ranks x 1 thread")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def run_variant(variant: Variant, model: Path, calib: Path, workload: Workload, *, threads: int,
                error_samples: int, outputs: Path, work: Path, timeout_s: float,
                log_name: str | None = None) -> tuple[RunResult, Path]:
    """One run of ``variant``; its log is ``work/<log_name>.log`` (default: the variant's slug).
    Runs whose logs are read after later runs (the pairs) need a name each."""
    slug = _slug(variant.name)
    save = outputs / slug
    shutil.rmtree(save, ignore_errors=True)
    config = work / f"{slug}.yaml"
    config.write_text(yaml.safe_dump(variant.config(), sort_keys=False), encoding="utf-8")
    device = "cpu" if variant.ranks == 1 else "cpu:" + ",".join(str(i) for i in range(variant.ranks))
    argv = [sys.executable, "-m", "quantjob.cli", "quantize", "--model_path", str(model), "--save_path", str(save),
            "--device", device, "--config_path", str(config), "--calib_file", str(calib),
            "--calib_samples", str(workload.samples), "--max_length", str(workload.seq),
            "--error_samples", str(error_samples), "--next_layer_input", variant.next_layer_input, "--overwrite"]
    result = run_measured(argv, env=thread_env(variant.threads or threads), log_path=work / f"{log_name or slug}.log",
                          cwd=REPO_ROOT, timeout_s=timeout_s)
    return result, save


def run_llmc(model: Path, calib: Path, workload: Workload, *, threads: int, outputs: Path, work: Path,
             timeout_s: float) -> tuple[RunResult | None, Path | None, str]:
    """llm-compressor's SmoothQuant(0.8) + W8A8 static in its venv; (None, None, why) when it cannot run."""
    from bench.llmc.venv import ensure_venv

    python, why = ensure_venv()
    if python is None:
        return None, None, why
    save = outputs / _slug(LLMC_NAME)
    shutil.rmtree(save, ignore_errors=True)
    argv = [str(python), str(Path(__file__).resolve().parent / "llmc" / "quantize.py"), "--model", str(model),
            "--recipe", "smoothquant-w8a8-static", "--smoothing-strength", "0.8", "--calib", str(calib),
            "--samples", str(workload.samples), "--seq", str(workload.seq), "--save", str(save),
            "--report", str(work / "llmc-report.json")]
    result = run_measured(argv, env=thread_env(threads), log_path=work / "llmc.log", cwd=REPO_ROOT,
                          timeout_s=timeout_s)
    return result, save, ""


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def quant_errors(save: Path) -> list[float]:
    table = json.loads((save / "quant_errors.json").read_text(encoding="utf-8"))
    return [layer["relative_error"] for layer in table["layers"]]


def run(workload: Workload, *, threads: int, error_samples: int, heldout: int, llmc: bool, outputs: Path,
        cache: Path, work: Path, timeout_s: float, only: set[str] | None, pairs: int = 3,
        contention: bool = True) -> tuple[str, dict[str, Any]]:
    from bench.layer_errors import ascend_layer, compressed_tensors_layer, layer_errors

    shape = workload.shape
    model = model_dir(shape, cache)
    calib = calibration_file(workload.samples + heldout, workload.seq, shape.vocab, cache=cache)
    ids = read_calibration_ids(calib)
    in_sample, held = ids[:error_samples], ids[workload.samples:workload.samples + heldout]
    outputs.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    selected = [v for v in VARIANTS if not only or v.name in only]
    paired = [v for v in selected if v.name in PAIR]
    if len(paired) < len(PAIR):  # one of the two alone: an ordinary row
        paired = []
    between = (lambda: measure_contention(shape, workload.seq).factor) if contention else None
    timed, factors = _run_pairs(paired, pairs, model, calib, workload, threads=threads, error_samples=error_samples,
                                outputs=outputs, work=work, timeout_s=timeout_s, between=between)
    for variant in selected:
        if variant.name in timed:
            runs, save = timed[variant.name]
            result = median_run(runs)
        else:
            say(f"{variant.name}: quantize")
            result, save = run_variant(variant, model, calib, workload, threads=threads,
                                       error_samples=error_samples, outputs=outputs, work=work, timeout_s=timeout_s)
            runs = [result]
        errors = quant_errors(save)
        say(f"  {result.wall_s:.1f} s; end-to-end error on {len(held)} held-out samples")
        e2e = layer_errors(model, held, ascend_layer(save), chained=True)[-1] if held else None
        row = {"name": variant.name, "ranks": variant.ranks, "layers": shape.layers,
               "threads": variant.threads or threads,
               "next_layer_input": variant.next_layer_input, "wall_s": result.wall_s,
               "loop_s": engine_seconds(result), "walls_s": [r.wall_s for r in runs],
               "per_layer_s": [per_layer_seconds(r) for r in runs],
               "phases_s": [phase_seconds(r) for r in runs],
               "peak_rss_bytes": max(r.max_rank_peak_bytes() for r in runs),
               "mean_layer_error": mean(errors), "layer_errors": errors, "end_to_end_error": e2e,
               "output": str(save)}
        if variant.name in timed and factors:
            row["contention"] = factors
        for column, compute in SAVED_COLUMNS.items():
            row[column] = compute(save, model, in_sample, held)
        rows.append(row)
    skipped = ""
    if llmc and (not only or LLMC_NAME in only):
        say(f"{LLMC_NAME}: quantize (its own venv)")
        measured, kept, skipped = run_llmc(model, calib, workload, threads=threads, outputs=outputs, work=work,
                                           timeout_s=timeout_s)
        if measured is not None and kept is not None:
            say(f"  {measured.wall_s:.1f} s; its layer errors from the saved files")
            errors = layer_errors(model, in_sample, compressed_tensors_layer(kept), chained=False)
            e2e = layer_errors(model, held, compressed_tensors_layer(kept), chained=True)[-1] if held else None
            rows.append({"name": LLMC_NAME, "ranks": 1, "threads": threads, "next_layer_input": "-",
                         "wall_s": measured.wall_s, "loop_s": None, "peak_rss_bytes": measured.max_rss_bytes,
                         "mean_layer_error": mean(errors), "layer_errors": errors, "end_to_end_error": e2e,
                         "output": str(kept)})
        else:
            say(f"  skipped: {skipped}")
    elif not llmc:
        skipped = "--no-llmc"
    text = report(rows, workload, threads, error_samples, len(held), skipped)
    payload = {"shape": shape.as_dict(), "samples": workload.samples, "seq": workload.seq, "threads": threads,
               "error_samples": error_samples, "heldout": len(held), "rows": rows, "llmc_skipped": skipped or None,
               "targets": targets(rows)}
    return text, payload


def _run_pairs(paired: list[Variant], pairs: int, model: Path, calib: Path, workload: Workload, *, threads: int,
               error_samples: int, outputs: Path, work: Path, timeout_s: float,
               between: Callable[[], float] | None = None
               ) -> tuple[dict[str, tuple[list[RunResult], Path]], list[float]]:
    """The 1-rank and 2-rank rows, ``pairs`` times each, in turn (1, 2, 1, 2, ...): every run's
    result and the (same bytes every time) output; and ``between()`` taken after each pair (the
    machine's contention factor, the same hour as the pair)."""
    timed: dict[str, tuple[list[RunResult], Path]] = {}
    factors: list[float] = []
    for repeat in range(pairs if paired else 0):
        for variant in paired:
            say(f"{variant.name}: quantize (pair {repeat + 1} of {pairs})")
            # a log per run: the loop time and the per-layer figure are read from each run's own log
            # once every pair has run (one shared log made every pair read the last run's)
            result, save = run_variant(variant, model, calib, workload, threads=threads, error_samples=error_samples,
                                       outputs=outputs, work=work, timeout_s=timeout_s,
                                       log_name=f"{_slug(variant.name)}-pair{repeat + 1}")
            timed.setdefault(variant.name, ([], save))[0].append(result)
            say(f"  {result.wall_s:.1f} s")
        if between is not None:
            factors.append(between())
            say(f"  two busy cores outside quantjob: a plain decoder layer x{factors[-1]:.3f} as one of two processes")
    return timed, factors


def pair_speedups(one: dict[str, Any], two: dict[str, Any]) -> list[float]:
    """1-rank wall over 2-rank wall of each pair (runs taken in turn)."""
    return [a / b for a, b in zip(one["walls_s"], two["walls_s"], strict=True)]


def median_pair(ratios: list[float]) -> tuple[float, str]:
    """The median pair's ratio (the lower one of an even count, as ``median_run``) and every
    pair's ratio as text, in order ("1.57x 1.71x 1.86x")."""
    ordered = sorted(ratios)
    return ordered[(len(ordered) - 1) // 2], " ".join(f"{r:.2f}x" for r in ordered)


def each_pair(one: dict[str, Any], two: dict[str, Any], key: str) -> list[tuple[Any, Any]]:
    """The (1-rank, 2-rank) values of ``key`` pair by pair; none unless every run of both rows has
    one (a run that printed no progress or phases line leaves the figure out, not half of it)."""
    pairs = list(zip(one.get(key) or [], two.get(key) or [], strict=False))
    if not pairs or len(pairs) != len(one["walls_s"]) or not all(a and b for a, b in pairs):
        return []
    return pairs


def per_layer_speedup(one: dict[str, Any], two: dict[str, Any]) -> str:
    """For information beside the wall-time target: the same pairs' ratio per decoder layer after
    the first (start-up, warm-up and finish left out), the median pair and every pair."""
    ratios = [a / b for a, b in each_pair(one, two, "per_layer_s")]
    if not ratios:
        return ""
    median, every = median_pair(ratios)
    return f"; per layer after the first: {median:.2f}x" + (f" (pairs {every})" if len(ratios) > 1 else "")


def fixed_cost_ceiling(one: dict[str, Any], two: dict[str, Any]) -> str:
    """For information: each run's time outside its layers (wall less layers x per-layer slope:
    start-up, imports, the first layer's warm-up, the finish) and the speed-up two ranks would
    reach if they halved the 1-rank run's layer time exactly and paid its fixed cost once (Amdahl's
    ceiling); medians over the pairs."""
    layers, slopes = one.get("layers"), each_pair(one, two, "per_layer_s")
    if not layers or not slopes:
        return ""
    fixed_one = [wall - layers * a for wall, (a, _) in zip(one["walls_s"], slopes, strict=True)]
    fixed_two = [wall - layers * b for wall, (_, b) in zip(two["walls_s"], slopes, strict=True)]
    ceilings = [best_speedup(wall, fixed, 1.0) for wall, fixed in zip(one["walls_s"], fixed_one, strict=True)]
    text = (f"; outside the layers: 1 rank {median_pair(fixed_one)[0]:.1f} s, 2 ranks {median_pair(fixed_two)[0]:.1f} s"
            f"; ceiling (layers halved exactly, the 1-rank fixed cost once): {median_pair(ceilings)[0]:.2f}x")
    factors = two.get("contention") or []
    if len(factors) == len(fixed_one):
        bounds = [best_speedup(wall, fixed, factor)
                  for wall, fixed, factor in zip(one["walls_s"], fixed_one, factors, strict=True)]
        text += (f"; with this machine's contention (a plain decoder layer x{median_pair(factors)[0]:.3f} as one of "
                 f"two processes, taken after each pair): {median_pair(bounds)[0]:.2f}x")
    return text


def phase_losses(one: dict[str, Any], two: dict[str, Any]) -> str:
    """Where the 2-rank run loses against half the 1-rank run, phase by phase (rank 0's clock;
    each phase's median over the pairs), largest first: what a second rank adds or fails to halve."""
    pairs = each_pair(one, two, "phases_s")
    if not pairs:
        return ""
    names = sorted({name for a, b in pairs for name in (*a, *b)})
    lost = {name: median_pair([b.get(name, 0.0) - a.get(name, 0.0) / 2 for a, b in pairs])[0] for name in names}
    shown = [f"{name} {value:+.1f} s" for name, value in sorted(lost.items(), key=lambda kv: -kv[1])
             if abs(value) >= 0.05]
    return "2 ranks against half of 1 rank, by phase (rank 0, medians of the pairs): " + ", ".join(shown)


def _row(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["name"] == name), None)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured value and whether it is met (absent rows: skipped)."""
    found: list[dict[str, Any]] = []
    minmax, it, flex = _row(rows, "minmax alone"), _row(rows, "iter_smooth"), _row(rows, "flex_smooth_quant")
    one, two, llmc = (_row(rows, "flex_smooth_quant, 1 rank x 1 thread"),
                      _row(rows, "flex_smooth_quant, 2 ranks x 1 thread"), _row(rows, LLMC_NAME))
    if minmax and it and flex:
        found.append({"target": "error: flex_smooth_quant < iter_smooth < minmax alone",
                      "value": f"{flex['mean_layer_error']:.4f} < {it['mean_layer_error']:.4f} < "
                               f"{minmax['mean_layer_error']:.4f}",
                      "met": flex["mean_layer_error"] < it["mean_layer_error"] < minmax["mean_layer_error"]})
    if flex and llmc:
        found.append({"target": "error: flex_smooth_quant < llm-compressor SmoothQuant",
                      "value": f"{flex['mean_layer_error']:.4f} < {llmc['mean_layer_error']:.4f}",
                      "met": flex["mean_layer_error"] < llmc["mean_layer_error"]})
    if flex and minmax:
        ratio = flex["wall_s"] / minmax["wall_s"]
        found.append({"target": f"wall: flex_smooth_quant <= {TARGETS['flex_over_minmax_time']}x minmax alone",
                      "value": f"{ratio:.2f}x", "met": ratio <= TARGETS["flex_over_minmax_time"]})
    if flex and llmc:
        ratio = llmc["wall_s"] / flex["wall_s"]
        found.append({"target": f"wall: llm-compressor >= {TARGETS['llmc_over_flex_time']}x flex_smooth_quant",
                      "value": f"{ratio:.2f}x", "met": ratio >= TARGETS["llmc_over_flex_time"]})
    if one and two:
        ratios = pair_speedups(one, two)
        speedup, every = median_pair(ratios)
        each = f" (median of {len(ratios)} pairs: {every})" if len(ratios) > 1 else ""
        found.append({"target": f"wall: 2 ranks >= {TARGETS['two_rank_speedup']}x 1 rank (flex_smooth_quant)",
                      "value": f"{speedup:.2f}x{each}{per_layer_speedup(one, two)}{fixed_cost_ceiling(one, two)}",
                      "met": speedup >= TARGETS["two_rank_speedup"]})
    return found


def report(rows: list[dict[str, Any]], workload: Workload, threads: int, error_samples: int, heldout: int,
           skipped: str) -> str:
    extra = list(SAVED_COLUMNS)
    table = markdown_table(
        ["run", "ranks x threads", "mean layer error", "end-to-end error", *extra, "wall s", "every run s", "loop s",
         "peak RSS MB"],
        [(r["name"], f"{r['ranks']} x {r['threads']}", f"{r['mean_layer_error']:.4f}",
          "" if r["end_to_end_error"] is None else f"{r['end_to_end_error']:.4f}",
          *[f"{r[c]:.4f}" if isinstance(r.get(c), float) else "" for c in extra],
          r["wall_s"], " ".join(f"{w:.1f}" for w in r.get("walls_s", [])) if len(r.get("walls_s", [])) > 1 else "",
          r["loop_s"], mb(r["peak_rss_bytes"])) for r in rows])
    lines = [f"- {t['target']}: {t['value']} ({'met' if t['met'] else 'NOT met'})" for t in targets(rows)]
    one, two = _row(rows, PAIR[0]), _row(rows, PAIR[1])
    losses = phase_losses(one, two) if one and two else ""
    if losses:
        lines.append(f"- {losses}")
    if skipped:
        lines.append(f"- {LLMC_NAME}: skipped ({skipped})")
    header = (f"Smoothing benchmark: {workload.shape.key}, {workload.samples} samples x {workload.seq} tokens, "
              f"W8A8 static; layer errors on the first {error_samples} calibration samples, end-to-end on "
              f"{heldout} held-out samples")
    return f"{header}\n\n{table}\n\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_smooth", description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the single-process runs")
    parser.add_argument("--error-samples", type=int, default=8, help="samples of the per-layer error (default 8)")
    parser.add_argument("--heldout", type=int, default=8, help="held-out samples of the end-to-end error")
    parser.add_argument("--no-llmc", action="store_true", help="skip the llm-compressor row")
    parser.add_argument("--only", action="append", help="run only this row (repeatable; the row's name)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="runs of the 1-rank and 2-rank rows, taken in turn (default 3; the median counts)")
    parser.add_argument("--outputs", type=Path, default=OUTPUTS_DIR, help="where every run's output is kept")
    parser.add_argument("--keep-logs", action="store_true", help="keep every run's log (printed path)")
    parser.add_argument("--no-contention", action="store_true",
                        help="skip the two-busy-cores measurement after each pair (bench.contention)")
    args = parser.parse_args(argv)
    workload = workload_from_args(args)
    return run_bench("smooth", lambda work: run(
        workload, threads=args.threads, error_samples=args.error_samples, heldout=args.heldout,
        llmc=not args.no_llmc, outputs=args.outputs, cache=args.cache_dir, work=work, timeout_s=args.timeout,
        only=set(args.only) if args.only else None, pairs=max(1, args.pairs), contention=not args.no_contention),
        keep_logs=args.keep_logs, results_dir=args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
