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

from bench.measure import RunResult
from bench.models import CACHE_DIR, calibration_file, check_embedding_rows, weights_bytes
from bench.report import RESULTS_DIR, markdown_table, mb, run_bench, say
from bench.runs import QuantizeJob, per_layer_seconds, run_baseline, run_quantize

TIME_TARGET = 1.5      # quantize wall <= 1.5x one forward
SPEEDUP_TARGET = 1.8   # per-layer, 2 ranks against 1


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


def run(shape: MoeShape, samples: int, seq: int, *, quant_type: str, cache: Path, work: Path,
        timeout_s: float) -> tuple[str, dict[str, Any]]:
    from bench.report import machine

    calib = calibration_file(samples, seq, shape.vocab, cache=cache)
    model = model_dir(shape, cache)
    say(f"baseline forward: {shape.key}, {samples} x {seq} tokens, 2 threads")
    baseline, report = run_baseline(model, calib, work, "forward", mode="forward", threads=2, batch=8,
                                    timeout_s=timeout_s)
    forward_s = report["batched_decoder_s"] + report["batched_lm_head_s"]
    runs: dict[str, RunResult] = {}
    for name, ranks, threads in (("1 rank, 2 threads", 1, 2), ("1 rank, 1 thread", 1, 1), ("2 ranks, 1 thread each", 2, 1)):
        say(f"quantize {quant_type}: {name}")
        job = QuantizeJob(model, calib, samples, seq, ranks=ranks, threads=threads, quant_type=quant_type)
        runs[name] = run_quantize(job, work, name.replace(" ", "-").replace(",", ""), timeout_s=timeout_s)
        say(f"  {runs[name].wall_s:.1f} s, peak {mb(runs[name].max_rss_bytes):.0f} MB")
    layer_bytes = weights_bytes(model) / (shape.layers + 1)  # rough: the MTP layer is one more MoE layer
    rows = [("transformers forward (batches of 8, compute only)", forward_s, baseline.max_rss_bytes, None)]
    rows += [(f"quantjob quantize, {name} (whole process)", r.wall_s, r.max_rss_bytes, per_layer_seconds(r))
             for name, r in runs.items()]
    table = markdown_table(["run", "wall s", "peak RSS MB (largest process)", "s per layer"],
                           [(n, s, mb(rss), f"{lay:.2f}" if lay else "-") for n, s, rss, lay in rows])
    one, two = per_layer_seconds(runs["1 rank, 1 thread"]), per_layer_seconds(runs["2 ranks, 1 thread each"])
    ratio = runs["1 rank, 2 threads"].wall_s / forward_s
    verdict = "met" if ratio <= TIME_TARGET else "NOT met"
    two_rank_peak = mb(runs["2 ranks, 1 thread each"].max_rss_bytes)
    lines = [
        f"quantize (1 rank, 2 threads) / one forward = {ratio:.2f}x (target <= {TIME_TARGET}x: {verdict})",
        f"per-layer speed-up, 2 ranks against 1 (1 thread each) = {_ratio(one, two)} (target >= {SPEEDUP_TARGET}x)",
        (f"peak RSS of the 2-rank run's largest process = {two_rank_peak:.0f} MB; one decoder layer's weights "
         f"about {mb(layer_bytes):.0f} MB; whole model {mb(weights_bytes(model)):.0f} MB"),
    ]
    info = machine()
    header = (f"MoE benchmark: {shape.key}, {samples} samples x {seq} tokens, {quant_type}; CPU {info.get('cpu')}, "
              f"{info.get('cores')} cores. The machine is shared: figures are contended, a lower bound.")
    text = f"{header}\n\n{table}\n\n" + "\n".join(lines)
    payload = {"shape": shape.__dict__, "samples": samples, "seq": seq, "quant_type": quant_type,
               "baseline": {"wall_s": baseline.wall_s, "peak_rss_bytes": baseline.max_rss_bytes, **report},
               "runs": {name: {"wall_s": r.wall_s, "peak_rss_bytes": r.max_rss_bytes,
                               "per_layer_s": per_layer_seconds(r)} for name, r in runs.items()},
               "ratio_vs_forward": ratio, "layer_bytes": layer_bytes}
    return text, payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_moe", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny job (seconds to minutes)")
    for field, default in MoeShape().__dict__.items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, help=f"(default {default}; --quick: "
                                                                          f"{getattr(QUICK, field)})")
    parser.add_argument("--samples", type=int, help="calibration samples (default 64; --quick 8)")
    parser.add_argument("--seq", type=int, help="tokens per sample (default 512; --quick 64)")
    parser.add_argument("--quant-type", default="w8a8_dynamic", help="quantjob quantize --quant_type")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else MoeShape()
    shape = MoeShape(**{f: (getattr(args, f) if getattr(args, f) is not None else v) for f, v in base.__dict__.items()})
    samples = args.samples or (8 if args.quick else 64)
    seq = args.seq or (64 if args.quick else 512)
    return run_bench("moe", lambda work: run(shape, samples, seq, quant_type=args.quant_type, cache=args.cache_dir,
                                             work=work, timeout_s=args.timeout),
                     keep_logs=args.keep_logs, results_dir=args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
