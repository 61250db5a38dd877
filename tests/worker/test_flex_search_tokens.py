"""Issue 23: flex_smooth_quant's search scored on every calibration token (``ext.search_tokens: all``):
each rank scores its own samples, the per-sample sums are added in global sample order."""

from __future__ import annotations

import pytest
import torch

from quantjob.api.modelslim import FlexSmoothQuant
from quantjob.api.processor_registry import statistics_for
from quantjob.worker.group.distributed import ProcessGroup, shard_indices
from quantjob.worker.loop.observers import ActivationStats, record_probes
from quantjob.worker.loop.smoothing import SEARCH_GRID, SearchProblem, SearchScheme
from quantjob.worker.processors.flex_smooth import (
    LocalProblem,
    search_alpha_beta,
    search_alpha_beta_every_token,
    summed_scores,
)

SCHEMES = [SearchScheme(), SearchScheme(act="per_tensor", act_symmetric=False)]


def _samples(seed: int = 0, count: int = 5, d: int = 16) -> dict[int, torch.Tensor]:
    """Samples of different lengths, an outlier channel, and a first token far larger than the rest."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for g in range(count):
        x = torch.randn(6 + 5 * g, d, generator=generator)
        x[:, 3] *= 25.0
        x[0] *= 40.0  # the attention sink
        out[g] = x.bfloat16()
    return out


def _problem(samples: dict[int, torch.Tensor], scheme: SearchScheme, seed: int = 1) -> tuple[LocalProblem, torch.Tensor]:
    every = torch.cat([samples[g] for g in sorted(samples)]).float()
    w = torch.randn(24, every.shape[1], generator=torch.Generator().manual_seed(seed))
    stats = ActivationStats(every.amin(dim=0), every.amax(dim=0))
    return LocalProblem(samples, w, stats, w.abs().amax(dim=0), scheme), every


def _tasks(problem: LocalProblem) -> list[tuple[LocalProblem, float, float]]:
    return [(problem, a, b) for a, b in ((0.0, 1.0), (0.5, 0.5), (0.85, 0.15), (1.0, 0.3), (0.3, 0.0))]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_summed_error_is_the_error_over_every_token(scheme: SearchScheme) -> None:
    samples = _samples()
    problem, every = _problem(samples, scheme)
    whole = SearchProblem(every, problem.w_rows, problem.stats, problem.weight, scheme)
    tasks = _tasks(problem)
    for score, (_, alpha, beta) in zip(summed_scores(tasks, ProcessGroup(), len(samples)), tasks, strict=True):
        assert score == pytest.approx(whole.error(alpha, beta), rel=1e-5)


class _Ranks(ProcessGroup):
    """Rank ``rank`` of ``world``: ``ordered_sum`` also receives the other ranks' per-sample partials."""

    def __init__(self, rank: int, world: int, others: dict[int, torch.Tensor]) -> None:
        super().__init__(rank, world)
        self.others = others
        self.mine: dict[int, torch.Tensor] = {}

    def ordered_sum(self, partials: dict[int, torch.Tensor], num_samples: int, width: int) -> torch.Tensor:
        self.mine.update(partials)
        return ProcessGroup().ordered_sum({**self.others, **partials}, num_samples, width)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_summed_scores_do_not_depend_on_the_world_size(world: int, scheme: SearchScheme) -> None:
    samples = _samples(seed=4, count=7)
    full, _ = _problem(samples, scheme)
    single = summed_scores(_tasks(full), ProcessGroup(), len(samples))
    shards = []
    for rank in range(world):  # each rank holds only its own samples
        mine = {g: samples[g] for g in shard_indices(len(samples), rank, world)}
        local = LocalProblem(mine, full.w_rows, full.stats, full.weight, scheme)
        recorder = _Ranks(rank, world, {})
        summed_scores(_tasks(local), recorder, len(samples))
        shards.append((local, recorder.mine))
    for rank, (local, _) in enumerate(shards):
        others = {g: p for r, (_, part) in enumerate(shards) if r != rank for g, p in part.items()}
        assert summed_scores(_tasks(local), _Ranks(rank, world, others), len(samples)) == single


def test_search_on_every_token_picks_the_pair_of_all_the_data() -> None:
    scheme = SCHEMES[1]
    samples = _samples(seed=7, count=4)
    local, every = _problem(samples, scheme, seed=2)
    whole = SearchProblem(every, local.w_rows, local.stats, local.weight, scheme)
    chosen = search_alpha_beta_every_token([local], ProcessGroup(), len(samples))
    assert chosen == search_alpha_beta([whole], ProcessGroup())
    assert chosen[0][0] in SEARCH_GRID and chosen[0][0] > 0.0  # the outliers are worth migrating


def test_a_sample_no_token_reached_adds_nothing() -> None:
    """A routed expert that a sample never reached has no rows for it: that sample's partial is zero."""
    samples = _samples(count=3)
    problem, _ = _problem(samples, SCHEMES[0])
    without = LocalProblem({0: samples[0], 2: samples[2], 1: samples[1][:0]}, problem.w_rows, problem.stats,
                           problem.weight, SCHEMES[0])
    reference = LocalProblem({0: samples[0], 2: samples[2]}, problem.w_rows, problem.stats, problem.weight,
                             SCHEMES[0])
    assert summed_scores(_tasks(without), ProcessGroup(), 3) == summed_scores(_tasks(reference), ProcessGroup(), 3)


def test_every_row_is_recorded_token_zero_included() -> None:
    linear = torch.nn.Linear(4, 2)
    inputs = [torch.randn(1, 100, 4), torch.randn(1, 7, 4)]
    with record_probes({"fc": linear}, [5, 9], per_sample=None) as probes:
        for x in inputs:
            linear(x)
    for g, x in zip((5, 9), inputs, strict=True):
        assert torch.equal(probes["fc"][g], x[0])


def test_every_row_is_gathered_only_when_asked_for() -> None:
    assert statistics_for([FlexSmoothQuant()]) == {"minmax", "probes"}
    assert "rows" in statistics_for([FlexSmoothQuant.model_validate({"ext": {"search_tokens": "all"}})])
    fixed = FlexSmoothQuant.model_validate({"alpha": 0.5, "beta": 0.5, "ext": {"search_tokens": "all"}})
    assert "rows" not in statistics_for([fixed])  # nothing is searched
    with pytest.raises(ValueError, match="search_tokens"):
        FlexSmoothQuant.model_validate({"ext": {"search_tokens": "every"}})
