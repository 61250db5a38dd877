"""``flex_smooth_quant`` (alias ``flex_smooth``): smoothing with a searched alpha and beta per subgraph.

Per subgraph, ``s = a^alpha / w^beta`` with ``a`` / ``w`` the per-channel maxima of the activations
(over every calibration token, from the exactly reduced statistics) and of the consumers' weight
columns. Unless both are given, alpha and beta are searched as msModelSlim does: phase 1 tries
alpha on the grid 0, 0.05, ..., 1 with beta = 1 - alpha, phase 2 keeps that alpha and tries beta on
the same grid; the score is the relative output error of the subgraph with both sides
fake-quantized to int8 (``smoothing.SearchProblem``).

The score is measured on the probe rows of the activations (about ``observers.PROBE_TOKENS``, 1024,
tokens: token 0 and evenly spaced positions of every calibration sample, gathered from all ranks in
global sample order) and every output row of the consumers (``SEARCH_ROWS``).
Every rank then holds the same inputs; the candidates of a round are dealt out over the ranks
(candidate ``t`` to rank ``t % world_size``), each scored by one deterministic computation, and
the scores are gathered in candidate order, so every rank picks the same alpha and beta, and the
choice does not depend on the world size. Subgraphs that share no module are searched in the same
round (two collectives per round).

With ``ext: {search_tokens: all}`` the score is measured on every calibration token instead, as
msModelSlim does, without gathering them: each rank keeps every input row of its own samples
(``record_probes`` with every row), scores every candidate of a round on each of its samples (the
squared error and the reference's squared norm, float64, one single-threaded computation per
sample), and ``ProcessGroup.ordered_sum`` adds the per-sample sums in global sample order, the same bits
on every rank and for every world size. Math, sources and the cost: ``docs/algorithms.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

from quantjob.api.modelslim import FlexSmoothQuant, LinearQuant
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.observers import ActivationStats, evenly_spaced, probe_positions, probes_per_sample
from quantjob.worker.loop.smoothing import (
    SEARCH_GRID,
    WEIGHT_FLOOR,
    SearchProblem,
    SearchScheme,
    act_absmax,
    grid_choice,
    ov_scales_max,
    smoothing_scales,
    weight_absmax,
)
from quantjob.worker.model.adapters import Subgraph
from quantjob.worker.processors.context import LayerContext, Preflight
from quantjob.worker.processors.smoothing_sites import (
    consumer_stats,
    consumer_weights,
    fold_linear_pair,
    fold_norm_linear,
    selected_sites,
)

log = logging.getLogger("quantjob.worker")

# consumer output rows the search error is measured on (evenly spaced); None: every row, as
# msModelSlim. Issue 23's table (docs/algorithms.md, bench/flex_data.py): 128 rows changed the chosen
# (alpha, beta) however many tokens were scored; with every row the excess error stayed under 0.25%.
SEARCH_ROWS: int | None = None
LAST = len(SEARCH_GRID) - 1


def apply_flex_smooth(entry: FlexSmoothQuant, ctx: LayerContext) -> None:
    sites = [site for site in selected_sites(ctx, entry.enable_subgraph_type, entry.include, entry.exclude, entry.ext.sites)
             if consumer_stats(ctx, site) is not None]
    search = entry.alpha is None or entry.beta is None
    every_token = entry.ext.search_tokens == "all"
    activations = (gather_probes(ctx, [ctx.full_name(site.targets[0]) for site in sites])
                   if search and sites and not every_token else {})
    for batch in independent_batches(sites):
        # the sites of a batch share no module, so a problem's weight maxima still hold at its fold
        maxima: list[torch.Tensor | None] = [None] * len(batch)
        if search and every_token:
            local = [_local_problem(ctx, site) for site in batch]
            choices = search_alpha_beta_every_token(local, ctx.group, ctx.num_samples)
            maxima = [problem.weight for problem in local]
        elif search:
            problems = [_problem(ctx, site, activations[ctx.full_name(site.targets[0])]) for site in batch]
            choices = search_alpha_beta(problems, ctx.group)
            maxima = [problem.weight for problem in problems]
        else:
            assert entry.alpha is not None and entry.beta is not None
            choices = [(entry.alpha, entry.beta)] * len(batch)
        for site, (alpha, beta), weight in zip(batch, choices, maxima, strict=True):
            log.debug("flex_smooth_quant %s%s (%s): alpha %.2f beta %.2f", ctx.prefix, site.source, site.kind,
                      alpha, beta)
            _fold(ctx, site, alpha, beta, weight)


def _fold(ctx: LayerContext, site: Subgraph, alpha: float, beta: float, weight: torch.Tensor | None = None) -> None:
    """Fold the scales of ``alpha``, ``beta`` into the site; ``weight``: the consumers' current
    per-column maxima when already computed."""
    stats = consumer_stats(ctx, site)
    assert stats is not None
    act = act_absmax(stats)
    if weight is None:
        weight = weight_absmax(consumer_weights(ctx, site))
    if site.kind == "ov":
        assert site.heads is not None
        consumer, source = ov_scales_max(act, weight, alpha, beta, site.heads, WEIGHT_FLOOR)
        fold_linear_pair(ctx, site, consumer, source)
        return
    scales = smoothing_scales(act, weight, alpha, beta, WEIGHT_FLOOR)
    if site.kind == "norm-linear":
        fold_norm_linear(ctx, site, scales)
    else:
        fold_linear_pair(ctx, site, scales, scales)


def _problem(ctx: LayerContext, site: Subgraph, x: torch.Tensor) -> SearchProblem:
    stats = consumer_stats(ctx, site)
    assert stats is not None
    weights = consumer_weights(ctx, site)
    rows = torch.cat(weights) if SEARCH_ROWS is None else stacked_rows(weights, SEARCH_ROWS)
    entry = ctx.config.linear_quant_for(ctx.full_name(site.targets[0])) if ctx.config is not None else None
    return SearchProblem(x, rows, stats, weight_absmax(weights), search_scheme(entry))


@dataclass
class LocalProblem:
    """One subgraph's search data on this rank: the input rows of each of its own samples
    (``samples``: global sample index -> ``[L, d]``) and, as ``SearchProblem``, the consumers' rows,
    the reduced statistics, the consumers' column maxima and the scheme."""

    samples: dict[int, torch.Tensor]
    w_rows: torch.Tensor
    stats: ActivationStats
    weight: torch.Tensor
    scheme: SearchScheme

    def sample(self, g: int) -> SearchProblem | None:
        """The search problem of sample ``g``'s tokens (None: no token of it reached the subgraph)."""
        x = self.samples.get(g)
        if x is None or x.shape[0] == 0:
            return None
        return SearchProblem(x, self.w_rows, self.stats, self.weight, self.scheme)


def _local_problem(ctx: LayerContext, site: Subgraph) -> LocalProblem:
    name = ctx.full_name(site.targets[0])
    if name not in ctx.probes or ctx.probes_per_sample is not None:
        raise RuntimeError(f"every input row of {name} is needed (flex_smooth_quant ext.search_tokens: all): "
                           "its registration must ask for the 'rows' statistics")
    stats = consumer_stats(ctx, site)
    assert stats is not None
    weights = consumer_weights(ctx, site)
    entry = ctx.config.linear_quant_for(name) if ctx.config is not None else None
    return LocalProblem(ctx.probes[name], torch.cat(weights).float(), stats, weight_absmax(weights).float(),
                        search_scheme(entry))


def stacked_rows(weights: Sequence[torch.Tensor], count: int) -> torch.Tensor:
    """Rows ``evenly_spaced(count, total)`` of the weights stacked along their output dimension,
    taken from each weight without building the stack (a full copy of every consumer)."""
    picks = evenly_spaced(count, sum(w.shape[0] for w in weights))
    parts, start = [], 0
    for w in weights:
        mine = picks[(picks >= start) & (picks < start + w.shape[0])] - start
        if mine.numel():
            parts.append(w[mine.to(w.device)])
        start += w.shape[0]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def search_scheme(entry: LinearQuant | None) -> SearchScheme:
    """The quantization the search scores: that of the linear_quant entry that will quantize the
    subgraph's first consumer; msModelSlim's (int8 per token and per channel) when none will."""
    if entry is None:
        return SearchScheme()
    act, weight = entry.qconfig.act, entry.qconfig.weight
    mode: Literal["per_token", "per_tensor", "none"] = (
        "none" if act is None else "per_tensor" if act.scope == "per_tensor" else "per_token")
    return SearchScheme(act=mode, act_symmetric=act is None or act.symmetric, weight_bits=weight.bits,
                        weight_symmetric=weight.symmetric,
                        group_size=weight.group_size if weight.scope == "per_group" else None)


def independent_batches(sites: Sequence[Subgraph]) -> list[list[Subgraph]]:
    """Consecutive sites (in processing order) that share no module: their searches cannot see each
    other's folds, so they are searched in one round."""
    batches: list[list[Subgraph]] = []
    used: set[str] = set()
    for site in sites:
        modules = {site.source, *site.targets}
        if not batches or modules & used:
            batches.append([])
            used = set()
        batches[-1].append(site)
        used |= modules
    return batches


P = TypeVar("P")
T = TypeVar("T")


def search_alpha_beta(problems: Sequence[SearchProblem], group: ProcessGroup) -> list[tuple[float, float]]:
    """msModelSlim's two-phase grid search for every problem, the candidates shared over the ranks."""
    return two_phase_search(problems, lambda tasks: shared_scores(tasks, group))


def search_alpha_beta_every_token(problems: Sequence[LocalProblem], group: ProcessGroup,
                                  num_samples: int) -> list[tuple[float, float]]:
    """The same search scored on every token of every sample: each rank scores its own samples."""
    return two_phase_search(problems, lambda tasks: summed_scores(tasks, group, num_samples))


def two_phase_search(problems: Sequence[P], scores: Callable[[list[tuple[P, float, float]]], list[float]]
                     ) -> list[tuple[float, float]]:
    """Phase 1 (alpha, 1 - alpha), then phase 2 (the chosen alpha, every beta) for every problem;
    ``scores``: the error of every (problem, alpha, beta) task, the same list on every rank."""
    first = scores([(p, SEARCH_GRID[k], SEARCH_GRID[LAST - k]) for p in problems
                    for k in range(len(SEARCH_GRID))])
    size = len(SEARCH_GRID)
    alphas = [grid_choice(first[i * size:(i + 1) * size]) for i in range(len(problems))]
    # phase 2: alpha fixed, every beta but 1 - alpha, whose score phase 1 already has
    tasks = [(p, SEARCH_GRID[a], SEARCH_GRID[j]) for p, a in zip(problems, alphas, strict=True)
             for j in range(size) if j != LAST - a]
    second = iter(scores(tasks))
    choices: list[tuple[float, float]] = []
    for i, a in enumerate(alphas):
        errors = [first[i * size + a] if j == LAST - a else next(second) for j in range(size)]
        choices.append((SEARCH_GRID[a], SEARCH_GRID[grid_choice(errors, start=LAST - a)]))
    return choices


def shared_scores(tasks: Sequence[tuple[SearchProblem, float, float]], group: ProcessGroup,
                  score: Callable[[SearchProblem, float, float], float] = SearchProblem.error) -> list[float]:
    """``score`` of every task, each computed by rank ``index % world_size`` and gathered in task order."""
    mine = score_locally(tasks, range(group.rank, len(tasks), group.world_size), score)
    found: dict[int, float] = {}
    for part in group.all_gather_object(mine):
        found.update(part)
    return [found[t] for t in range(len(tasks))]


def score_locally(tasks: Sequence[tuple[SearchProblem, float, float]], indices: Sequence[int],
                  score: Callable[[SearchProblem, float, float], float]) -> dict[int, float]:
    """Score ``tasks[i]`` for every ``i`` in ``indices`` on this rank's threads, one candidate per
    thread, each single-threaded: a candidate is a few hundred small tensor operations, which
    threads inside one operation would only slow down, and its bits then never depend on how
    many threads the rank has."""
    return dict(single_threaded_map(lambda index: (index, score(*tasks[index])), indices))


def summed_scores(tasks: Sequence[tuple[LocalProblem, float, float]], group: ProcessGroup, num_samples: int) -> list[float]:
    """The relative error of every task over every calibration token of all ranks.

    Each rank computes, for each of its samples, the squared error of every task and the squared
    norm of every problem's reference output (float64; one single-threaded computation per sample,
    so its bits depend on the sample alone); ``ProcessGroup.ordered_sum`` adds these per-sample vectors in
    global sample order. Every rank gets the same list, whatever the world size."""
    problems = list({id(p): p for p, _, _ in tasks}.values())
    slot = {id(p): i for i, p in enumerate(problems)}
    act = [act_absmax(p.stats) for p in problems]
    scales = [smoothing_scales(act[slot[id(p)]], p.weight, alpha, beta, WEIGHT_FLOOR) for p, alpha, beta in tasks]
    width = len(tasks) + len(problems)
    samples = sorted({g for p in problems for g in p.samples})

    def one(g: int) -> tuple[int, torch.Tensor]:
        partial = torch.zeros(width, dtype=torch.float64)
        for i, problem in enumerate(problems):
            sample = problem.sample(g)
            if sample is None:
                continue
            partial[len(tasks) + i] = sample.norm
            for t, (p, _, _) in enumerate(tasks):
                if p is problem:
                    partial[t] = sample.squared_error_of(scales[t].to(sample.x.device))
        return g, partial

    totals = group.ordered_sum(dict(single_threaded_map(one, samples)), num_samples, width)
    out = []
    for t, (p, _, _) in enumerate(tasks):
        err, norm = float(totals[t]), float(totals[len(tasks) + slot[id(p)]])
        out.append(err / norm if norm > 0 else err)
    return out


def single_threaded_map(work: Callable[[T], tuple[int, P]], items: Sequence[T]) -> list[tuple[int, P]]:
    """``work`` of every item on this rank's threads, each single-threaded (its bits never depend on
    how many threads the rank has), in item order."""
    threads = max(1, torch.get_num_threads())
    if threads == 1 or len(items) < 2:  # no pool to start (a rank of a data-parallel run has one thread)
        with torch.inference_mode():
            return [work(item) for item in items]

    def single_threaded() -> None:
        torch.set_num_threads(1)

    def one(item: T) -> tuple[int, P]:
        with torch.inference_mode():
            return work(item)

    try:
        with ThreadPoolExecutor(threads, initializer=single_threaded) as pool:
            return list(pool.map(one, items))
    finally:
        torch.set_num_threads(threads)


def gather_probes(ctx: LayerContext, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each linear's probe rows from every rank, in global sample order (the same tensor on every rank)."""
    wanted = sorted(set(names))
    missing = [name for name in wanted if name not in ctx.probes]
    if missing:
        raise RuntimeError(f"no probe rows recorded for {missing[0]}: its registration must ask for the 'probes' statistics")
    if ctx.probes_per_sample is None:  # every row was kept (another entry scores every token): the probes of them
        per_sample = probes_per_sample(ctx.num_samples)
        local = {(name, g): rows[probe_positions(per_sample, rows.shape[0]).to(rows.device)]
                 for name in wanted for g, rows in ctx.probes[name].items()}
    else:
        local = {(name, g): rows for name in wanted for g, rows in ctx.probes[name].items()}
    merged: dict[str, dict[int, torch.Tensor]] = {name: {} for name in wanted}
    for part in ctx.group.all_gather_tensors(local):
        for (name, g), rows in part.items():
            merged[name][g] = rows
    device = next(ctx.layer.parameters()).device
    return {name: torch.cat([merged[name][g] for g in sorted(merged[name])]).to(device) for name in wanted}


def check_flex_smooth(entry: FlexSmoothQuant, path: str, view: Preflight) -> list[str]:
    """Nothing model-dependent to refuse: flex_smooth_quant is symmetric and adds no tensor."""
    return []
