"""Issue 23: how much data the flex_smooth_quant search needs for its (alpha, beta) to be that of all the data.

``python -m bench.flex_data``: the anchor model's shape (``bench.models.ANCHOR``, a random-weight
Llama with activation outliers; ``--layers`` of it), ``--samples`` x ``--seq`` calibration tokens.
Each decoder layer's four smoothing sites (input_layernorm -> q/k/v, v -> o, post_attention_layernorm
-> gate/up, up -> down) are searched with quantjob's own search (``smoothing.SearchProblem``,
``flex_smooth.search_alpha_beta``, scoring W8A8 static, as the anchor job quantizes) on:

- the reference: every calibration token and every weight row of the consumers;
- ``N`` probe tokens (``observers.probe_positions``: token 0 and ``ceil(N / samples)`` evenly spaced
  positions of each sample) with ``SEARCH_ROWS`` (128, the rows scored before issue 23) weight rows and with all of them, for
  N in ``--budgets``;
- the same without token 0 (the probes before issue 23), and every token with ``SEARCH_ROWS`` rows.

Each site is searched on the float layer's inputs, independently of the layer's other folds (the
runs fold ``up-down`` and ``ov`` before the norm-linear searches; the data question is the same).
Printed per data choice: how many sites chose the reference's (alpha, beta), the worst and mean
excess of the chosen pair's error on all the data over the reference's, and the search's time per
site (contended: the machine is shared). The table goes to ``docs/algorithms.md``.
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
from quantjob.worker.loop.observers import ActivationStats, evenly_spaced, probe_positions, probes_per_sample
from quantjob.worker.loop.smoothing import SearchProblem, SearchScheme, weight_absmax
from quantjob.worker.processors.flex_smooth import search_alpha_beta, stacked_rows

SITES = (  # (name, first consumer, every consumer), relative to a decoder layer
    ("input_layernorm", "self_attn.q_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("v_proj", "self_attn.o_proj", ("self_attn.o_proj",)),
    ("post_attention_layernorm", "mlp.gate_proj", ("mlp.gate_proj", "mlp.up_proj")),
    ("up_proj", "mlp.down_proj", ("mlp.down_proj",)),
)
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


def layer_inputs(directory: str, samples: list[list[int]]) -> tuple[torch.nn.Module, dict[str, list[torch.Tensor]]]:
    """The float model, and every sample's input rows (``[seq, d]``, bf16) of each site's first
    consumer, per layer."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    model.eval()
    found: dict[str, list[torch.Tensor]] = {}
    handles = []
    for index in range(len(model.model.layers)):
        for _, consumer, _ in SITES:
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


def site_data(model: torch.nn.Module, inputs: dict[str, list[torch.Tensor]], index: int) -> Iterator[
        tuple[str, list[torch.Tensor], torch.Tensor, ActivationStats, list[torch.Tensor]]]:
    """Each site of decoder layer ``index``: its source, its input rows per sample, those rows
    together, their statistics, and its consumers' weights."""
    for source, first, consumers in SITES:
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
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the anchor shape (default 4)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--budgets", type=int, nargs="+", default=[256, 1024, 4096])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    shape = ANCHOR.with_layers(args.layers)
    directory = model_dir(shape)
    samples = read_calibration_ids(calibration_file(args.samples, args.seq, shape.vocab))
    model, inputs = layer_inputs(str(directory), samples)
    choices = [(f"{n} tokens (token 0 + spread), {rows}", n, True, few)
               for n in args.budgets for rows, few in ((f"{SEARCH_ROWS} rows", True), ("all rows", False))]
    choices += [(f"{args.budgets[0]} tokens (spread only, before issue 23), {SEARCH_ROWS} rows", args.budgets[0],
                 False, True),
                (f"all {args.samples * args.seq} tokens, {SEARCH_ROWS} rows", 0, True, True)]
    labels = [label for label, *_ in choices]
    outcomes = {label: Outcome() for label in labels}
    reference_time = 0.0
    for index in range(args.layers):
        for source, rows, every, stats, weights in site_data(model, inputs, index):
            weight = weight_absmax(weights)
            full = SearchProblem(every, torch.cat(weights), stats, weight, SCHEME)
            best, seconds = timed(lambda full=full: choose(full))
            reference_time += seconds
            best_error = full.error(*best)
            few_rows = stacked_rows(weights, SEARCH_ROWS)
            all_rows = torch.cat(weights)
            for label, budget, first_token, few in choices:
                x = subset(rows, probes_per_sample(len(rows), budget), first_token) if budget else every
                problem = SearchProblem(x, few_rows if few else all_rows, stats, weight, SCHEME)
                chosen, seconds = timed(lambda problem=problem: choose(problem))
                excess = full.error(*chosen) / best_error - 1 if best_error > 0 else 0.0
                outcomes[label].add(chosen == best, excess, seconds)
                print(f"layer {index} {source}: reference {best}, {label}: {chosen} (+{excess:.2%})", flush=True)
    sites = args.layers * len(SITES)
    table = [[f"all {args.samples * args.seq} tokens, all rows (reference)", f"{sites}/{sites}", "0", "0",
              f"{reference_time / sites:.2f}"]]
    for label, outcome in outcomes.items():
        table.append([label, f"{outcome.agree}/{outcome.sites}", f"{outcome.worst:.3%}",
                      f"{outcome.excess_sum / max(1, outcome.sites):.3%}", f"{outcome.seconds / max(1, outcome.sites):.2f}"])
    print(f"\nanchor shape {shape.key}, {args.layers} layers, {args.samples} x {args.seq} tokens, W8A8 static scheme; "
          f"CPU {machine().get('cpu', '?')} (contended)")
    print(markdown_table(["search data", "same (alpha, beta) as reference", "worst excess error (all data)",
                          "mean excess", "s per site"], table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
