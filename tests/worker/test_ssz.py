"""The ssz weight method: known answers on tiny channels, against brute force and against minmax."""

from __future__ import annotations

import pytest
import torch

from quantjob.api.modelslim import WeightQuantSpec
from quantjob.worker.loop.observers import WEIGHT_METHODS
from quantjob.worker.loop.quantizers import dequantize_weight, quantize_weight, representable
from quantjob.worker.loop.ssz import ssz_weight


def mse(w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (q.double() * scale.double() - w.double()).pow(2).mean(dim=1)


def brute_force(w: torch.Tensor, bits: int, around: float) -> float:
    """The smallest mean squared error of one row over 200001 scales in [0.2, 1.5] x ``around``."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    grid = torch.linspace(around * 0.2, around * 1.5, 200001, dtype=torch.float64).unsqueeze(1)
    q = torch.round(w.double() / grid).clamp(qmin, qmax)
    return float((q * grid - w.double()).pow(2).mean(dim=1).min())


def test_known_answer_is_the_least_squares_scale() -> None:
    # int4, w = [7, 3.2, 3.2, 3.2]: minmax gives scale 1 and q = [7, 3, 3, 3]; for those integers the
    # least-squares scale is <w, q> / <q, q> = (49 + 3 * 9.6) / (49 + 27) = 77.8 / 76, and the
    # integers do not move at that scale: ssz stops there, at the optimum.
    w = torch.tensor([[7.0, 3.2, 3.2, 3.2]])
    q, scale, offset = ssz_weight(w, "per_channel", 4, True)
    assert q.tolist() == [[7, 3, 3, 3]] and offset.tolist() == [[0.0]]
    assert float(scale) == pytest.approx(77.8 / 76, rel=1e-6)
    assert float(mse(w, q, scale)) == pytest.approx(brute_force(w, 4, 1.0), rel=1e-5)


@pytest.mark.parametrize("row", [[1.0, 0.45, 0.45, -0.45, 0.2], [0.9, 0.5, -0.5, 0.25, 0.1]])
def test_tiny_int4_channels_reach_the_brute_force_optimum(row: list[float]) -> None:
    w = torch.tensor([row])
    _, minmax_scale, _ = quantize_weight(w, "per_channel", 4, True)
    q, scale, _ = ssz_weight(w, "per_channel", 4, True)
    best = brute_force(w, 4, float(minmax_scale))
    assert float(mse(w, q, scale)) == pytest.approx(best, rel=1e-4)
    q0, s0, _ = quantize_weight(w, "per_channel", 4, True)
    assert float(mse(w, q, scale)) < float(mse(w, q0, s0))


@pytest.mark.parametrize("bits", [8, 4])
def test_never_worse_than_minmax_and_rows_are_independent(bits: int) -> None:
    generator = torch.Generator().manual_seed(bits)
    w = (torch.randn(32, 64, generator=generator) * torch.rand(32, 1, generator=generator)).bfloat16()
    w[3, 5] *= 30.0  # a row with an outlier, where minmax wastes most of its range
    q, scale, _ = ssz_weight(w, "per_channel", bits, True)
    q0, s0, _ = quantize_weight(w, "per_channel", bits, True)
    assert (mse(w.float(), q, scale) <= mse(w.float(), q0, s0)).all()
    assert (mse(w.float(), q, scale) < mse(w.float(), q0, s0)).any()
    # the scales are representable in the weight's dtype, so the saved scale is the one searched
    assert torch.equal(representable(scale, torch.bfloat16), scale)
    # each row is searched on its own: the same bits whichever rows share the call
    q_top, s_top, _ = ssz_weight(w[:7], "per_channel", bits, True)
    assert torch.equal(q_top, q[:7]) and torch.equal(s_top, scale[:7])


def test_zero_row_keeps_a_usable_scale() -> None:
    w = torch.zeros(2, 8)
    w[1] = torch.linspace(-1, 1, 8)
    q, scale, _ = ssz_weight(w, "per_channel", 8, True)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert torch.equal(dequantize_weight(q, scale, torch.zeros_like(scale))[0], torch.zeros(8))


def test_steps_bound_the_iterations() -> None:
    w = torch.tensor([[1.0, 0.45, 0.45, -0.45, 0.2]])
    _, zero_steps, _ = ssz_weight(w, "per_channel", 4, True, steps=0)
    _, minmax_scale, _ = quantize_weight(w, "per_channel", 4, True)
    assert torch.equal(zero_steps, minmax_scale)


def test_registered_with_ext_step() -> None:
    w = torch.tensor([[1.0, 0.45, 0.45, -0.45, 0.2]])
    spec = WeightQuantSpec(scope="per_channel", dtype="int4", method="ssz", ext={"step": 1})
    assert torch.equal(WEIGHT_METHODS["ssz"](w, spec)[1], ssz_weight(w, "per_channel", 4, True, steps=1)[1])


@pytest.mark.parametrize(("scope", "symmetric"), [("per_group", True), ("per_channel", False)])
def test_refuses_what_it_does_not_search(scope: str, symmetric: bool) -> None:
    with pytest.raises(ValueError, match="symmetric per_channel"):
        ssz_weight(torch.ones(2, 8), scope, 8, symmetric, 4)
