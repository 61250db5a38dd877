"""Issue 23: the measured effect of each deliberate difference from msModelSlim's smoothing code.

``python -m bench.smooth_choices``: the anchor model's shape (``--layers`` of it), ``--samples`` x
``--seq`` calibration tokens, each decoder layer's four smoothing sites on the float layer's inputs.
Every figure is the relative output error ``||Q(x/s) Q(W s)^T - x W^T||^2 / ||x W^T||^2`` of one
subgraph quantized W8A8 static (the anchor job's scheme) on every calibration token and every weight
row (``smoothing.SearchProblem.error_of``), averaged over the sites a choice applies to:

- iter_smooth's weight maximum for ``ov`` / ``up-down``: ``max |W|`` per column (quantjob) against the
  signed column maximum ``max W`` (msModelSlim's ``IterSmoothScaleCalculator.compute_smooth_scale``
  reduces the raw weight of those kinds: processor/anti_outlier/common/scale_computation.py);
- iter_smooth's scales in float32 (quantjob) against rounded to the model dtype, bf16 (msModelSlim);
- the asymmetric mode's ``max |x - z|``: with ``z`` the final midpoint, exact (quantjob) against
  accumulated sample by sample with the running midpoint (msModelSlim's ``IterStatsCollector``,
  processor/anti_outlier/iter_smooth/processor.py);
- flex_smooth_quant's search scheme: the consumers' own quantization, here W8A8 static (quantjob),
  against int8 per token / int8 per channel always (msModelSlim's ``FlexSmoothAlphaBetaSearcher``,
  processor/anti_outlier/flex_smooth/alpha_beta_search.py); both search on ``--search-tokens``
  probe tokens and every weight row, and the pair each picks is scored on all the data.

Errors are exact figures (any machine gives the same); nothing here is timed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from bench.flex_data import SCHEME, layer_inputs, site_data, subset
from bench.models import ANCHOR, calibration_file, model_dir, read_calibration_ids
from bench.report import machine, markdown_table
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.observers import ActivationStats, probes_per_sample
from quantjob.worker.loop.smoothing import (
    WEIGHT_FLOOR,
    SearchProblem,
    SearchScheme,
    act_absmax,
    smoothing_scales,
    weight_absmax,
)
from quantjob.worker.processors.flex_smooth import search_alpha_beta

ALPHA = 0.9  # iter_smooth's default


def running_shifted_absmax(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """msModelSlim's asymmetric ``max |x - z|``: each sample's ``|x - z|`` with ``z`` the midpoint of
    the range seen so far (that sample included), the maximum accumulated over samples."""
    lo = hi = found = None
    for x in rows:
        x = x.float()
        lo = x.amin(dim=0) if lo is None else torch.minimum(lo, x.amin(dim=0))
        hi = x.amax(dim=0) if hi is None else torch.maximum(hi, x.amax(dim=0))
        part = (x - (lo + hi) / 2).abs().amax(dim=0)
        found = part if found is None else torch.maximum(found, part)
    assert found is not None
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--search-tokens", type=int, default=1024)
    args = parser.parse_args(argv)
    shape = ANCHOR.with_layers(args.layers)
    samples = read_calibration_ids(calibration_file(args.samples, args.seq, shape.vocab))
    model, inputs = layer_inputs(str(model_dir(shape)), samples)
    sums: dict[str, list[float]] = {}

    def add(name: str, ours: float, theirs: float) -> None:
        sums.setdefault(name, []).extend([ours, theirs])

    for index in range(args.layers):
        for source, rows, every, stats, weights in site_data(model, inputs, index):
            stacked = torch.cat(weights)
            weight = weight_absmax(weights)
            problem = SearchProblem(every, stacked, stats, weight, SCHEME)
            act = act_absmax(stats)
            ours = smoothing_scales(act, weight, ALPHA, 1 - ALPHA, 1e-5)
            dtype = weights[0].dtype
            add("iter_smooth scales: float32 (ours) / bf16 (msModelSlim), all sites",
                problem.error_of(ours), problem.error_of(ours.to(dtype).float()))
            if not source.endswith("layernorm"):
                signed = stacked.float().amax(dim=0).clamp(min=WEIGHT_FLOOR)
                add("iter_smooth ov/up-down weight max: |W| (ours) / signed W (msModelSlim)",
                    problem.error_of(ours), problem.error_of(smoothing_scales(act, signed, ALPHA, 1 - ALPHA, 1e-5)))
            else:
                shift = (stats.minimum + stats.maximum) / 2
                shifted = SearchProblem(every.float() - shift, stacked,
                                        ActivationStats(stats.minimum - shift, stats.maximum - shift), weight, SCHEME)
                exact = torch.maximum(stats.maximum - shift, shift - stats.minimum)
                running = running_shifted_absmax(rows)
                add("asymmetric max |x - z|: exact (ours) / running (msModelSlim), norm-linear",
                    shifted.error_of(smoothing_scales(exact, weight, ALPHA, 1 - ALPHA, 1e-5)),
                    shifted.error_of(smoothing_scales(running, weight, ALPHA, 1 - ALPHA, 1e-5)))
            probe = subset(rows, probes_per_sample(len(rows), args.search_tokens), True)
            picks = [search_alpha_beta([SearchProblem(probe, stacked, stats, weight, scheme)], ProcessGroup())[0]
                     for scheme in (SCHEME, SearchScheme())]
            add("flex search scheme: consumers' W8A8 static (ours) / int8 per token (msModelSlim)",
                problem.error(*picks[0]), problem.error(*picks[1]))
            print(f"layer {index} {source}: flex picks static {picks[0]}, per-token {picks[1]}", flush=True)
    table = []
    for name, values in sums.items():
        ours, theirs = sum(values[0::2]) / (len(values) // 2), sum(values[1::2]) / (len(values) // 2)
        table.append([name, len(values) // 2, f"{ours:.5f}", f"{theirs:.5f}", f"{theirs / ours - 1:+.2%}"])
    print(f"\nanchor shape {shape.key}, {args.samples} x {args.seq} tokens, subgraph error W8A8 static, "
          f"all tokens and rows; CPU {machine().get('cpu', '?')}")
    print(markdown_table(["choice", "sites", "mean error, ours", "mean error, msModelSlim's", "msModelSlim's vs ours"],
                         table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
