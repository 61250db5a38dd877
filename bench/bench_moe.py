"""Issue 25 benchmark: quantizing a Mixture-of-Experts model against a plain transformers forward.

``python -m bench.bench_moe`` (the issue's model: DeepSeek-V3-shaped, 8 layers, hidden 1024, 64
routed experts of which 8 per token, 2 shared experts, 64 samples x 512 tokens; long on 2 cores) or
``--quick`` (2 layers, hidden 128, 16 experts of which 4 per token, 8 x 64). Every run is its own
subprocess (``bench.measure``): the baseline ``bench.forward`` loads the whole model with
transformers (its default experts kernel) and runs the calibration tokens in batches of 8;
``quantjob quantize`` runs once on 1 rank and once on 2 ranks, 1 thread per rank (so the per-layer
speed-up is that of the ranks, not of the threads). Prints the CPU model, wall times, peak RSS per
process and per rank, and the per-layer seconds; writes ``moe.{json,md}`` under ``--results-dir``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.llmc.venv import QUANTIZE_SCRIPT, llmc_python
from bench.measure import RunResult, run_measured, thread_env
from bench.models import CACHE_DIR, calibration_file, check_embedding_rows
from bench.report import RESULTS_DIR, markdown_table, mb, run_bench, say
from bench.runs import REPO_ROOT, QuantizeJob, per_layer_seconds, run_baseline, run_quantize

TIME_TARGET = 1.5      # quantize wall <= 1.5x one forward
SPEEDUP_TARGET = 1.8   # per-layer, 2 ranks against 1
MIXED_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "deepseek-v3-w8a8-mixed.yaml"


@dataclass(frozen=True)
class MoeShape:
    layers: int = 8
    hidden: int = 1024
    intermediate: int = 2048   # an expert is intermediate // 4 wide (quantjob.worker.model.demo)
    experts: int = 64
    per_token: int = 8
    shared: int = 2
    vocab: int = 32000
    heads: int = 16

    @property
    def key(self) -> str:
        return (f"deepseek-L{self.layers}-h{self.hidden}-i{self.intermediate}-e{self.experts}-k{self.per_token}"
                f"-s{self.shared}-v{self.vocab}-a{self.heads}")


QUICK = MoeShape(layers=2, hidden=128, intermediate=256, experts=16, per_token=4, shared=2, vocab=1024, heads=4)


def model_dir(shape: MoeShape, cache: Path) -> Path:
    import torch

    from quantjob.worker.model.demo import build_demo_model

    target = cache / "models" / shape.key
    if (target / "config.json").is_file():
        return target
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    build_demo_model(building, family="deepseek_v3", num_layers=shape.layers, hidden_size=shape.hidden,
                     intermediate_size=shape.intermediate, num_heads=shape.heads, num_kv_heads=shape.heads,
                     vocab_size=shape.vocab, dtype=torch.bfloat16,
                     experts=(shape.experts, shape.per_token, shape.shared))
    check_embedding_rows(building, shape.vocab)
    building.rename(target)
    return target


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def header_bytes(directory: Path) -> dict[str, int]:
    """Bytes of every tensor of a model directory, from its safetensors headers (no tensor is read)."""
    from quantjob.worker.model.checkpoint import read_header

    return {name: info.nbytes for file in sorted(directory.glob("*.safetensors"))
            for name, info in read_header(file).items()}


def layer_and_embedding_bytes(directory: Path, layers: int) -> tuple[int, int]:
    """(the largest decoder layer's bytes, the embedding's bytes) of a checkpoint: the units of the
    issue's memory target (peak RSS per rank <= 3 layers + embedding)."""
    sizes = header_bytes(directory)
    per_layer = [sum(n for name, n in sizes.items() if name.startswith(f"model.layers.{i}.")) for i in range(layers)]
    return max(per_layer), sizes.get("model.embed_tokens.weight", 0)


FLOOR_SCRIPT = """
import sys
from pathlib import Path
import torch
import quantjob.worker.entry
from quantjob.worker.loop import runner
from quantjob.worker.model.adapters import adapter_for
from quantjob.worker.model.decoder import build_skeleton
from quantjob.worker.model.model_config import read_model_config
model = Path(sys.argv[1])
adapter = adapter_for(read_model_config(model), None, config_file=str(model / "config.json"))
build_skeleton(model, adapter, torch.device("cpu"), trust_remote_code=False)
"""


def runtime_floor(model: Path, work: Path, timeout_s: float) -> RunResult:
    """Peak RSS of a process that does what a rank does before it reads any weight: imports torch,
    transformers and the loop, and builds the model's skeleton on the meta device (which imports
    the family's transformers modeling code: 138 MiB of the 400 MiB for DeepSeek-V3 in
    transformers 5.25). The part of every rank's RSS that no layer accounts for."""
    argv = [sys.executable, "-c", FLOOR_SCRIPT, str(model)]
    return run_measured(argv, env=thread_env(1), log_path=work / "floor.log", cwd=REPO_ROOT, timeout_s=timeout_s)


def run_llm_compressor(model: Path, calib: Path, samples: int, seq: int, work: Path,
                       timeout_s: float) -> tuple[RunResult | None, str]:
    """llm-compressor's W8A8 (per-token dynamic activations, its MoE calibration) on the same model and
    samples, 2 threads in one process; (None, why) when its venv is missing or it fails."""
    python = llmc_python()
    if python is None:
        return None, ("llm-compressor row skipped: no venv (make it with `python -m bench.llmc.venv`, or set "
                      "QUANTJOB_LLMC_PYTHON)")
    save = work / "llmc-out"
    argv = [str(python), str(QUANTIZE_SCRIPT), "--model", str(model), "--recipe", "w8a8-dynamic", "--calib",
            str(calib), "--samples", str(samples), "--seq", str(seq), "--save", str(save)]
    try:
        result = run_measured(argv, env=thread_env(2), log_path=work / "llmc.log", cwd=REPO_ROOT,
                              timeout_s=timeout_s, check=False)
    finally:
        shutil.rmtree(save, ignore_errors=True)
    if result.returncode != 0:
        lines = [line for line in (work / "llmc.log").read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip()]
        last = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
        return None, f"llm-compressor failed on this model (exit {result.returncode}): {last.strip()[:240]}"
    return result, ""


def run(shape: MoeShape, samples: int, seq: int, *, config: Path | None, quant_type: str, cache: Path, work: Path,
        timeout_s: float, with_llmc: bool) -> tuple[str, dict[str, Any]]:
    from bench.report import machine

    calib = calibration_file(samples, seq, shape.vocab, cache=cache)
    model = model_dir(shape, cache)
    what = config.name if config else quant_type
    say(f"baseline forward: {shape.key}, {samples} x {seq} tokens, 2 threads")
    baseline, report = run_baseline(model, calib, work, "forward", mode="forward", threads=2, batch=8,
                                    timeout_s=timeout_s)
    forward_s = report["batched_decoder_s"] + report["batched_lm_head_s"]
    runs: dict[str, RunResult] = {}
    for name, ranks, threads in (("1 rank, 2 threads", 1, 2), ("1 rank, 1 thread", 1, 1), ("2 ranks, 1 thread each", 2, 1)):
        say(f"quantize {what}: {name}")
        job = QuantizeJob(model, calib, samples, seq, ranks=ranks, threads=threads, quant_type=quant_type,
                          config_path=config)
        runs[name] = run_quantize(job, work, name.replace(" ", "-").replace(",", ""), timeout_s=timeout_s)
        say(f"  {runs[name].wall_s:.1f} s, peak per rank {mb(runs[name].max_rank_peak_bytes()):.0f} MB")
    llmc, llmc_note = (None, "llm-compressor row skipped (--no-llmc)")
    if with_llmc:
        say("llm-compressor W8A8 dynamic, one process, 2 threads")
        llmc, llmc_note = run_llm_compressor(model, calib, samples, seq, work, timeout_s)
    floor = runtime_floor(model, work, timeout_s)
    layer, embedding = layer_and_embedding_bytes(model, shape.layers)
    rows = [("transformers forward (batches of 8, compute only)", forward_s, baseline.max_rss_bytes, None)]
    rows += [(f"quantjob quantize, {name} (whole process)", r.wall_s, r.max_rank_peak_bytes(), per_layer_seconds(r))
             for name, r in runs.items()]
    if llmc is not None:
        rows.append(("llm-compressor oneshot W8A8 dynamic, 2 threads (whole process)", llmc.wall_s,
                     llmc.max_rss_bytes, None))
    table = markdown_table(["run", "wall s", "peak RSS MB (per rank)", "s per layer"],
                           [(n, s, mb(rss), f"{lay:.2f}" if lay else "-") for n, s, rss, lay in rows])
    one, two = per_layer_seconds(runs["1 rank, 1 thread"]), per_layer_seconds(runs["2 ranks, 1 thread each"])
    whole_one, whole_two = runs["1 rank, 1 thread"].wall_s, runs["2 ranks, 1 thread each"].wall_s
    ratio = runs["1 rank, 2 threads"].wall_s / forward_s
    speedup = one / two if one and two else None
    peak = max(r.max_rank_peak_bytes() for r in runs.values())
    budget = 3 * layer + embedding
    lines = [
        (f"quantize (1 rank, 2 threads, whole process) / one forward (compute only) = {ratio:.2f}x "
        f"(target <= {TIME_TARGET}x: {'met' if ratio <= TIME_TARGET else 'NOT met'})"),
        (f"per-layer speed-up, 2 ranks against 1 (1 thread each) = {_ratio(one, two)} "
        f"(target >= {SPEEDUP_TARGET}x: {'met' if speedup and speedup >= SPEEDUP_TARGET else 'NOT met'}); "
        f"whole process {_ratio(whole_one, whole_two)}"),
        (f"peak RSS per rank, largest of the three runs = {mb(peak):.0f} MB; 3 layers + embedding = "
         f"{mb(budget):.0f} MB (one layer {mb(layer):.0f} MB, embedding {mb(embedding):.0f} MB): "
         f"{'met' if peak <= budget else 'NOT met'}; less the {mb(floor.max_rss_bytes):.0f} MB a process holds "
         f"before it reads a weight (torch, transformers, the loop and the meta skeleton imported and built): "
         f"{mb(peak - floor.max_rss_bytes):.0f} MB "
         f"({'met' if peak - floor.max_rss_bytes <= budget else 'NOT met'})"),
        *([(f"llm-compressor / quantjob (both 2 threads, whole process) = "
           f"{_ratio(llmc.wall_s, runs['1 rank, 2 threads'].wall_s)}")] if llmc is not None else [llmc_note]),
    ]
    info = machine()
    load = info.get("loadavg_1_5_15_at_end")
    header = (f"MoE benchmark: {shape.key}, {samples} samples x {seq} tokens, {what}; CPU {info.get('cpu')}, "
              f"{info.get('cores')} cores; load average at the end {load} (other work on the machine slows "
              "every row).")
    text = f"{header}\n\n{table}\n\n" + "\n".join(lines)
    payload = {"shape": shape.__dict__, "samples": samples, "seq": seq, "config": what,
               "baseline": {"wall_s": baseline.wall_s, "peak_rss_bytes": baseline.max_rss_bytes, **report},
               "runs": {name: {"wall_s": r.wall_s, "peak_rss_bytes": r.max_rank_peak_bytes(),
                               "per_layer_s": per_layer_seconds(r)} for name, r in runs.items()},
               "llm_compressor": ({"wall_s": llmc.wall_s, "peak_rss_bytes": llmc.max_rss_bytes} if llmc
                                  else {"skipped": llmc_note}),
               "ratio_vs_forward": ratio, "per_layer_speedup": speedup, "layer_bytes": layer,
               "embedding_bytes": embedding, "runtime_floor_bytes": floor.max_rss_bytes}
    return text, payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_moe", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny job (seconds to minutes)")
    for field, default in MoeShape().__dict__.items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, help=f"(default {default}; --quick: "
                                                                          f"{getattr(QUICK, field)})")
    parser.add_argument("--samples", type=int, help="calibration samples (default 64; --quick 8)")
    parser.add_argument("--seq", type=int, help="tokens per sample (default 512; --quick 64)")
    parser.add_argument("--config", type=Path, default=MIXED_CONFIG,
                        help="modelslim_v1 config (default: the shipped DeepSeek-V3 W8A8 mixed config)")
    parser.add_argument("--quant-type", help="quantjob quantize --quant_type instead of a config (e.g. w8a8_dynamic)")
    parser.add_argument("--no-llmc", action="store_true", help="leave out the llm-compressor row")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else MoeShape()
    shape = MoeShape(**{f: (getattr(args, f) if getattr(args, f) is not None else v) for f, v in base.__dict__.items()})
    samples = args.samples or (8 if args.quick else 64)
    seq = args.seq or (64 if args.quick else 512)
    return run_bench("moe", lambda work: run(shape, samples, seq, config=None if args.quant_type else args.config,
                                             quant_type=args.quant_type or "", cache=args.cache_dir, work=work,
                                             timeout_s=args.timeout, with_llmc=not args.no_llmc),
                     keep_logs=args.keep_logs, results_dir=args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
