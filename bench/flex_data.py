"""Issue 23: how much data the flex_smooth_quant search needs for its (alpha, beta) to be that of all the data.

``python -m bench.flex_data``: the anchor model's shape (``bench.models.ANCHOR``, a random-weight
Llama with activation outliers; ``--layers`` of it), or ``--model gemma3`` (Gemma3-270M, the
``real`` extra, ``bench.real_model``: Shakespeare samples), ``--samples`` x ``--seq`` calibration
tokens. Each decoder layer's four smoothing sites (input_layernorm -> q/k/v, v -> o, the MLP's norm
-> gate/up, up -> down) are searched with quantjob's own search (``smoothing.SearchProblem``,
``flex_smooth.search_alpha_beta``, scoring W8A8 static, as the anchor job quantizes) on:

- the reference: every calibration token and every weight row of the consumers, scored as
  ``ext.search_tokens: all`` scores it (``flex_smooth.search_alpha_beta_every_token``: per-sample
  sums added in sample order); ``--whole`` also searches the concatenated tokens as one problem
  (msModelSlim's gathered data) and counts where the two choose alike;
- ``N`` probe tokens (``observers.probe_positions``: token 0 and ``ceil(N / samples)`` evenly spaced
  positions of each sample) with every weight row, for N in ``--budgets`` (``PROBE_TOKENS``, 1024,
  the default subset, is the one timed against every token when it is among them);
- with ``--few-rows``: the same with ``SEARCH_ROWS`` (128, the rows scored before issue 23) rows, the
  probes without token 0 (before issue 23), and every token with 128 rows.

Each site is searched on the float layer's inputs, independently of the layer's other folds (the
runs fold ``up-down`` and ``ov`` before the norm-linear searches; the data question is the same).
Printed per data choice: how many sites chose the reference's (alpha, beta), the worst and mean
excess of the chosen pair's error on all the data over the reference's, and the search's time per
site; per site, how many layers agree; per layer, the search's seconds with the default subset and
with every token, over msModelSlim's sites (norm-linear) and over all four (contended: the machine
is shared). The tables go to ``docs/algorithms.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from bench.models import ANCHOR, calibration_file, model_dir, read_calibration_ids
from bench.report import machine, markdown_table
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.observers import (
    PROBE_TOKENS,
    ActivationStats,
    evenly_spaced,
    probe_positions,
    probes_per_sample,
)
from quantjob.worker.loop.smoothing import SearchProblem, SearchScheme, weight_absmax
from quantjob.worker.processors.flex_smooth import (
    LocalProblem,
    search_alpha_beta,
    search_alpha_beta_every_token,
    stacked_rows,
    summed_scores,
)

SITES = (  # (name, first consumer, every consumer), relative to a decoder layer
    ("input_layernorm", "self_attn.q_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("v_proj", "self_attn.o_proj", ("self_attn.o_proj",)),
    ("post_attention_layernorm", "mlp.gate_proj", ("mlp.gate_proj", "mlp.up_proj")),
    ("up_proj", "mlp.down_proj", ("mlp.down_proj",)),
)
# Gemma3 feeds gate/up from pre_feedforward_layernorm (its post_attention_layernorm norms the attention output)
GEMMA3_SITES = (SITES[0], SITES[1], ("pre_feedforward_layernorm", *SITES[2][1:]), SITES[3])
NORM_LINEAR = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm")  # msModelSlim's sites
SCHEME = SearchScheme(act="per_tensor")  # the anchor job: W8A8 static
SEARCH_ROWS = 128  # the weight rows the search scored before issue 23 (flex_smooth.SEARCH_ROWS then)


@dataclass
class Outcome:
    agree: int = 0
    sites: int = 0
    worst: float = 0.0
    excess_sum: float = 0.0
    seconds: float = 0.0

    def add(self, same: bool, excess: float, seconds: float) -> None:
        self.agree += int(same)
        self.sites += 1
        self.worst = max(self.worst, excess)
        self.excess_sum += excess
        self.seconds += seconds


def layer_inputs(directory: str, samples: list[list[int]], sites: Sequence[tuple[str, str, tuple[str, ...]]] = SITES,
                 layers: Sequence[int] | None = None) -> tuple[torch.nn.Module, dict[str, list[torch.Tensor]]]:
    """The float model, and every sample's input rows (``[seq, d]``, bf16) of each site's first
    consumer, per layer (``layers``: those only)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    model.eval()
    found: dict[str, list[torch.Tensor]] = {}
    handles = []
    for index in range(len(model.model.layers)) if layers is None else layers:
        for _, consumer, _ in sites:
            name = f"model.layers.{index}.{consumer}"
            found[name] = []

            def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], _name: str = name) -> None:
                found[_name].append(args[0].detach()[0].clone())

            handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    with torch.inference_mode():
        for ids in samples:
            model(torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return model, found


def site_data(model: torch.nn.Module, inputs: dict[str, list[torch.Tensor]], index: int,
              sites: Sequence[tuple[str, str, tuple[str, ...]]] = SITES) -> Iterator[
        tuple[str, list[torch.Tensor], torch.Tensor, ActivationStats, list[torch.Tensor]]]:
    """Each site of decoder layer ``index``: its source, its input rows per sample, those rows
    together, their statistics, and its consumers' weights."""
    for source, first, consumers in sites:
        rows = inputs[f"model.layers.{index}.{first}"]
        every = torch.cat(rows)
        stats = ActivationStats.empty(every.shape[1], every.device)
        stats.update(every)
        weights = [model.get_submodule(f"model.layers.{index}.{c}").weight.detach() for c in consumers]
        yield source, rows, every, stats, weights


def choose(problem: SearchProblem) -> tuple[float, float]:
    return search_alpha_beta([problem], ProcessGroup())[0]


def timed(action: Callable[[], tuple[float, float]]) -> tuple[tuple[float, float], float]:
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def subset(rows: Sequence[torch.Tensor], per_sample: int, first_token: bool) -> torch.Tensor:
    picks = [x[(probe_positions if first_token else evenly_spaced)(per_sample, x.shape[0])] for x in rows]
    return torch.cat(picks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["anchor", "gemma3"], default="anchor")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1],
                        help="decoder layers searched (default 0 1; the anchor shape is built with max + 1 layers)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--budgets", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--few-rows", action="store_true", help="also the 128-row and spread-only subsets")
    parser.add_argument("--whole", action="store_true",
                        help="also search all tokens concatenated as one problem (msModelSlim's gathered data)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.model == "gemma3":
        from bench.real_model import calibration_file as real_calibration
        from bench.real_model import gemma_dir

        directory = gemma_dir()
        samples = read_calibration_ids(real_calibration(directory, args.samples, args.seq))
        sites, name = GEMMA3_SITES, "Gemma3-270M"
    else:
        shape = ANCHOR.with_layers(max(args.layers) + 1)
        directory = model_dir(shape)
        samples = read_calibration_ids(calibration_file(args.samples, args.seq, shape.vocab))
        sites, name = SITES, f"anchor shape {shape.key}"
    model, inputs = layer_inputs(str(directory), samples, sites, args.layers)
    tokens = sum(len(ids) for ids in samples)
    choices = [(f"{n} tokens (token 0 + spread), all rows", n, True, False) for n in args.budgets]
    if args.few_rows:
        choices += [(f"{n} tokens (token 0 + spread), {SEARCH_ROWS} rows", n, True, True) for n in args.budgets]
        choices += [(f"{args.budgets[0]} tokens (spread only, before issue 23), {SEARCH_ROWS} rows", args.budgets[0],
                     False, True), (f"all {tokens} tokens, {SEARCH_ROWS} rows", 0, True, True)]
    # the subset timed against every token: the default budget (PROBE_TOKENS) when it is among --budgets
    timed_label, timed_budget = next(((label, n) for label, n, *_ in choices if n == PROBE_TOKENS), choices[0][:2])
    outcomes = {label: Outcome() for label, *_ in choices}
    per_site = {source: {label: 0 for label, *_ in choices} for source, *_ in sites}
    whole_same = 0
    layer_seconds: dict[int, dict[str, float]] = {}
    reference_time = 0.0
    for index in args.layers:
        seconds_of = layer_seconds.setdefault(index, {"subset msm": 0.0, "all msm": 0.0, "subset": 0.0, "all": 0.0})
        for source, rows, every, stats, weights in site_data(model, inputs, index, sites):
            weight = weight_absmax(weights).float()
            all_rows = torch.cat(weights).float()
            local, n = LocalProblem(dict(enumerate(rows)), all_rows, stats, weight, SCHEME), len(rows)
            best, seconds = timed(lambda local=local, n=n: search_alpha_beta_every_token([local], ProcessGroup(), n)[0])
            reference_time += seconds
            seconds_of["all"] += seconds
            seconds_of["all msm"] += seconds if source in NORM_LINEAR else 0.0
            if args.whole:
                whole = SearchProblem(every, all_rows, stats, weight, SCHEME)
                whole_same += int(choose(whole) == best)
            few_rows = stacked_rows(weights, SEARCH_ROWS)
            for label, budget, first_token, few in choices:
                x = subset(rows, probes_per_sample(len(rows), budget), first_token) if budget else every
                problem = SearchProblem(x, few_rows if few else all_rows, stats, weight, SCHEME)
                chosen, seconds = timed(lambda problem=problem: choose(problem))
                if label == timed_label:
                    seconds_of["subset"] += seconds
                    seconds_of["subset msm"] += seconds if source in NORM_LINEAR else 0.0
                errors = summed_scores([(local, *chosen), (local, *best)], ProcessGroup(), len(rows))
                excess = errors[0] / errors[1] - 1 if errors[1] > 0 else 0.0
                outcomes[label].add(chosen == best, excess, seconds)
                per_site[source][label] += int(chosen == best)
                print(f"layer {index} {source}: every token {best}, {label}: {chosen} (+{excess:.2%})", flush=True)
    count = len(args.layers) * len(sites)
    print(f"\n{name}, layers {' '.join(map(str, args.layers))}, {args.samples} x {args.seq} tokens, W8A8 static scheme; "
          f"CPU {machine().get('cpu', '?')} (contended: 2 cores shared by several jobs)")
    table = [[f"all {tokens} tokens, all rows (reference, search_tokens: all)", f"{count}/{count}", "0", "0",
              f"{reference_time / count:.2f}"]]
    for label, outcome in outcomes.items():
        table.append([label, f"{outcome.agree}/{outcome.sites}", f"{outcome.worst:.3%}",
                      f"{outcome.excess_sum / max(1, outcome.sites):.3%}", f"{outcome.seconds / max(1, outcome.sites):.2f}"])
    print(markdown_table(["search data", "same (alpha, beta) as every token", "worst excess error (all data)",
                          "mean excess", "s per site"], table))
    if args.whole:
        print(f"\nall tokens as one problem (msModelSlim's gathered data) chose as the per-sample sums on "
              f"{whole_same}/{count} sites")
    layers = len(args.layers)
    print("\nsites choosing every token's pair, per site (layers)")
    print(markdown_table(["site", *[label.split(",")[0] for label, *_ in choices], f"all {tokens} tokens"],
                         [[source, *[f"{per_site[source][label]}/{layers}" for label, *_ in choices],
                           f"{layers}/{layers}"] for source, *_ in sites]))
    print("\nsearch seconds per layer: the default subset against every token")
    print(markdown_table(["layer", f"msModelSlim's sites: {timed_budget} tokens", "msModelSlim's sites: every token",
                          f"all four sites: {timed_budget} tokens", "all four sites: every token", "ratio"],
                         [[str(i), f"{t['subset msm']:.1f}", f"{t['all msm']:.1f}", f"{t['subset']:.1f}", f"{t['all']:.1f}",
                           f"{t['all'] / max(t['subset'], 1e-9):.1f}x"] for i, t in layer_seconds.items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
