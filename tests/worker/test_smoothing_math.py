"""The smoothing math on hand-made tensors with known answers (quantjob.worker.loop.smoothing)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.observers import (
    PROBE_TOKENS,
    ActivationStats,
    evenly_spaced,
    probe_positions,
    probes_per_sample,
    record_probes,
)
from quantjob.worker.loop.smoothing import (
    SEARCH_GRID,
    SearchProblem,
    SearchScheme,
    act_absmax,
    act_midpoint,
    divide_rows,
    grid_choice,
    mapped_stats,
    ov_scales_max,
    ov_scales_mean,
    scale_columns,
    shifted_absmax,
    shifted_bias,
    shifted_norm_bias,
    smoothing_scales,
    weight_absmax,
    weight_signed_max,
)
from quantjob.worker.model.adapters import AttentionHeads, Subgraph
from quantjob.worker.processors.flex_smooth import (
    independent_batches,
    search_alpha_beta,
    shared_scores,
    stacked_rows,
)


def stats(lo: list[float], hi: list[float]) -> ActivationStats:
    return ActivationStats(torch.tensor(lo), torch.tensor(hi))


def test_statistics_from_the_observed_range() -> None:
    s = stats([-8.0, 1.0, -3.0], [2.0, 5.0, -1.0])
    assert act_absmax(s).tolist() == [8.0, 5.0, 3.0]
    assert act_midpoint(s).tolist() == [-3.0, 3.0, -2.0]
    # max |x - z| over the range is half its width
    assert shifted_absmax(s, act_midpoint(s)).tolist() == [5.0, 2.0, 1.0]


def test_signed_weight_maximum_is_msmodelslims() -> None:
    """iter_smooth's ov / up-down / linear-linear weight statistic: the signed column maximum over
    every consumer (msModelSlim's IterSmoothScaleCalculator on the raw weight), floored at 1e-5."""
    first = torch.tensor([[-3.0, 1.0, -2.0], [2.0, -5.0, -4.0]])
    second = torch.tensor([[0.5, 0.25, -1.0]])
    assert weight_signed_max([first, second]).tolist() == pytest.approx([2.0, 1.0, 1e-5])
    assert weight_absmax([first, second]).tolist() == [3.0, 5.0, 4.0]


def test_scales_follow_the_smoothquant_formula() -> None:
    act, weight = torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0])
    floor = torch.tensor(1e-5).item()  # float32's 1e-5
    assert smoothing_scales(act, weight, 0.5, 0.5, 1e-5).tolist() == [4.0, 0.5, floor]
    assert torch.allclose(smoothing_scales(act, weight, 0.75, 0.25, 1e-5), torch.tensor([8.0, 4.0 ** -0.25, 1e-5]))
    # weight maxima: per input column over every consumer's rows, floored at 1e-5
    w1, w2 = torch.tensor([[1.0, -3.0, 0.0]]), torch.tensor([[-2.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    assert weight_absmax([w1, w2]).tolist() == [2.0, 3.0, floor]


def test_ov_scales_respect_grouped_query_attention() -> None:
    # 4 query heads over 2 key/value heads, head_dim 2: heads 0,1 read kv head 0; heads 2,3 kv head 1
    heads = AttentionHeads(num_heads=4, num_kv_heads=2, head_dim=2)
    scales = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    o_scales, v_scales = ov_scales_mean(scales, heads)
    assert v_scales.tolist() == [2.0, 3.0, 6.0, 7.0]
    assert o_scales.tolist() == [2.0, 3.0, 2.0, 3.0, 6.0, 7.0, 6.0, 7.0]
    act = torch.tensor([1.0, 4.0, 9.0, 1.0, 16.0, 1.0, 1.0, 4.0])
    o_max, v_max = ov_scales_max(act, torch.ones(8), 0.5, 0.5, heads, 1e-5)
    assert v_max.tolist() == [3.0, 2.0, 4.0, 2.0]
    assert o_max.tolist() == [3.0, 2.0, 3.0, 2.0, 4.0, 2.0, 4.0, 2.0]


def test_symmetric_fold_preserves_the_function() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    s = torch.tensor([2.0, 0.5, 4.0, 1.0], dtype=torch.float64)
    assert torch.allclose((x / s) @ scale_columns(w, s).T, x @ w.T)
    # a producer's rows divided by s feed a consumer whose columns are multiplied by s
    producer = torch.randn(4, 6, dtype=torch.float64)
    h = torch.randn(2, 6, dtype=torch.float64)
    assert torch.allclose((h @ divide_rows(producer, s).T) @ scale_columns(w, s).T, (h @ producer.T) @ w.T)


def test_asymmetric_fold_preserves_the_function() -> None:
    torch.manual_seed(1)
    x, w, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.randn(3)
    z, s = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([2.0, 0.5, 4.0, 1.0])
    norm_bias = shifted_norm_bias(None, z, s, torch.float64)
    assert torch.allclose(norm_bias, -z.double() / s)
    smoothed = (x / s + norm_bias) @ scale_columns(w, s).T + shifted_bias(w, b, z, torch.float64)
    assert torch.allclose(smoothed, x @ w.T + b.double())


def test_mapped_statistics_are_those_of_the_smoothed_activations() -> None:
    s = stats([-8.0, 1.0], [2.0, 5.0])
    shift, scale = act_midpoint(s), torch.tensor([5.0, 0.5])
    out = mapped_stats(s, scale, shift)
    assert out.minimum.tolist() == [-1.0, -4.0] and out.maximum.tolist() == [1.0, 4.0]


def test_grid_and_choice_rules() -> None:
    assert SEARCH_GRID[0] == 0.0 and SEARCH_GRID[-1] == 1.0 and len(SEARCH_GRID) == 21
    assert grid_choice([3.0, 1.0, 2.0, 1.0]) == 3            # ties go to the later grid value
    assert grid_choice([3.0, 1.0, 2.0, 1.0], start=2) == 3
    assert grid_choice([3.0, 2.0, 2.0, 5.0], start=3) == 2   # anything at most the running best wins


def _reference_error(x: torch.Tensor, w: torch.Tensor, act: torch.Tensor, weight: torch.Tensor,
                     alpha: float, beta: float, per_tensor: bool = False) -> float:
    """msModelSlim's evaluate_alpha_beta, written plainly in float64 (per token, per row); with
    ``per_tensor``, static asymmetric int8 activations over the range of ``x`` instead."""
    s = (act.double() ** alpha / weight.double() ** beta).clamp(min=1e-5)
    a, b = x.double() / s, w.double() * s
    if per_tensor:
        lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
        step = (hi - lo) / 255
        zero = round(-lo / step) - 128
        qa = (torch.round(a / step) + zero).clamp(-128, 127).sub(zero) * step
    else:
        step_a = a.abs().amax(dim=1, keepdim=True) / 127
        qa = torch.round(a / step_a).clamp(-127, 127) * step_a   # dequantized, per token
    step_b = b.abs().amax(dim=1, keepdim=True) / 127
    qb = torch.round(b / step_b).clamp(-127, 127) * step_b   # dequantized, per output row
    golden = x.double() @ w.double().T
    return float(((qa @ qb.T - golden) ** 2).sum() / (golden ** 2).sum())


def _outlier_problem(seed: int = 0) -> tuple[SearchProblem, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 32, generator=generator)
    x[:, 3] *= 40.0  # one outlier channel: smoothing pays off
    w = torch.randn(24, 32, generator=generator) * 0.05
    stats = ActivationStats(x.amin(dim=0), x.amax(dim=0))
    return SearchProblem(x, w, stats, w.abs().amax(dim=0)), x, w


def test_search_error_matches_the_reference_definition() -> None:
    problem, x, w = _outlier_problem()
    for alpha, beta in ((0.0, 0.0), (0.5, 0.5), (0.85, 0.15), (1.0, 0.3)):
        assert problem.error(alpha, beta) == pytest.approx(
            _reference_error(x, w, problem.act, problem.weight, alpha, beta), rel=1e-4)


def test_static_per_tensor_scheme_matches_the_reference() -> None:
    problem, x, w = _outlier_problem()
    static = SearchProblem(x, w, problem.stats, problem.weight, SearchScheme(act="per_tensor", act_symmetric=False))
    for alpha, beta in ((0.0, 0.0), (0.5, 0.5), (0.9, 0.1)):
        assert static.error(alpha, beta) == pytest.approx(
            _reference_error(x, w, problem.act, problem.weight, alpha, beta, per_tensor=True), rel=1e-3)
    # outliers hurt a per-tensor range far more than per-token scales: smoothing matters more there
    assert static.error(0.0, 0.0) > 3 * problem.error(0.0, 0.0)


def test_two_phase_search_finds_the_reference_optimum() -> None:
    problem, x, w = _outlier_problem()
    ref = {(a, b): _reference_error(x, w, problem.act, problem.weight, a, b)
           for a, b in itertools.product(SEARCH_GRID, SEARCH_GRID)}
    k = grid_choice([ref[(SEARCH_GRID[i], SEARCH_GRID[20 - i])] for i in range(21)])
    j = grid_choice([ref[(SEARCH_GRID[k], b)] for b in SEARCH_GRID], start=20 - k)
    ((alpha, beta),) = search_alpha_beta([problem], ProcessGroup())
    assert (alpha, beta) == (SEARCH_GRID[k], SEARCH_GRID[j])
    assert alpha > 0.3  # the outlier channel is worth migrating
    assert ref[(alpha, beta)] < ref[(0.0, 0.0)] / 2  # and doing so halves the error at least


class _SimulatedRanks(ProcessGroup):
    """One of ``world`` ranks whose all_gather_object sees what every rank computes on the same inputs."""

    def __init__(self, rank: int, world: int, tasks: list, score) -> None:  # type: ignore[no-untyped-def]
        super().__init__(rank, world)
        self.tasks, self.score = tasks, score

    def all_gather_object(self, obj):  # type: ignore[no-untyped-def]
        parts = []
        for r in range(self.world_size):
            parts.append(obj if r == self.rank else
                         {t: self.score(*self.tasks[t]) for t in range(r, len(self.tasks), self.world_size)})
        return parts


@pytest.mark.parametrize("world", [2, 3])
def test_candidate_scores_do_not_depend_on_the_world_size(world: int) -> None:
    problem, _, _ = _outlier_problem(seed=3)
    tasks = [(problem, a, 1.0 - a) for a in SEARCH_GRID]
    single = shared_scores(tasks, ProcessGroup())
    for rank in range(world):
        group = _SimulatedRanks(rank, world, tasks, SearchProblem.error)
        assert shared_scores(tasks, group) == single


def test_independent_batches_keep_dependent_sites_apart() -> None:
    up_down = Subgraph("up-down", "mlp.up_proj", ("mlp.down_proj",))
    ov = Subgraph("ov", "self_attn.v_proj", ("self_attn.o_proj",))
    qkv = Subgraph("norm-linear", "input_layernorm", ("self_attn.q_proj", "self_attn.v_proj"))
    mlp = Subgraph("norm-linear", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))
    assert independent_batches([up_down, ov, qkv, mlp]) == [[up_down, ov], [qkv, mlp]]


def test_probe_positions_depend_on_the_sample_only() -> None:
    assert evenly_spaced(4, 8).tolist() == [1, 3, 5, 7]
    assert evenly_spaced(10, 3).tolist() == [0, 1, 2]
    assert probes_per_sample(64, 256) == 4 and probes_per_sample(7, 256) == 37 and probes_per_sample(1000, 256) == 1
    assert probes_per_sample(64) == 16  # PROBE_TOKENS = 1024 (issue 23's table)


def test_the_docs_state_the_probe_default() -> None:
    """docs/algorithms.md chooses PROBE_TOKENS from its tables and names the value; design.md repeats it."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    assert f"`PROBE_TOKENS = {PROBE_TOKENS}`" in (docs / "algorithms.md").read_text(encoding="utf-8")
    assert f"`PROBE_TOKENS` ({PROBE_TOKENS}," in (docs / "design.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("count", "length"), [(1, 1), (1, 512), (4, 8), (4, 9), (37, 512), (600, 512), (3, 0)])
def test_every_samples_first_token_is_probed(count: int, length: int) -> None:
    """Issue 23: token 0 (the attention sink, with the largest activations) is always scored, which
    the bin middles alone miss whenever a sample is longer than twice the count."""
    positions = probe_positions(count, length).tolist()
    assert positions == sorted(set(positions)) and all(0 <= p < length for p in positions)
    assert (0 in positions) == (length > 0)
    assert set(evenly_spaced(count, length).tolist()) <= set(positions)


def test_recorded_probes_hold_each_samples_first_token() -> None:
    linear = torch.nn.Linear(4, 2)
    samples = [torch.randn(1, 100, 4), torch.randn(1, 7, 4)]
    with record_probes({"fc": linear}, [5, 9], per_sample=3) as probes:
        for x in samples:
            linear(x)
    for index, x in zip((5, 9), samples, strict=True):
        assert torch.equal(probes["fc"][index][0], x[0, 0])
        assert torch.equal(probes["fc"][index], x[0, probe_positions(3, x.shape[1])])


@pytest.mark.parametrize("sizes", [(7,), (1024, 256, 256), (3, 5, 2), (100, 1, 1), (2, 300)])
@pytest.mark.parametrize("count", [1, 5, 128, 1000])
def test_search_rows_are_those_of_the_stacked_consumers(sizes: tuple[int, ...], count: int) -> None:
    """The rows a search scores are read from each consumer, never from a stacked copy of all of them."""
    weights = [torch.randn(n, 4) for n in sizes]
    stacked = torch.cat(weights)
    assert torch.equal(stacked_rows(weights, count), stacked[evenly_spaced(count, stacked.shape[0])])
