"""Quantization math: scale/offset formulas, round trips within half a step, edge cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantjob.worker.quantizers import (
    dequantize,
    dequantize_weight,
    fake_quantize_per_token,
    int_range,
    quantize,
    quantize_weight,
    scale_offset,
)


def test_asymmetric_int8_matches_design_formula() -> None:
    scale, offset = scale_offset(torch.tensor([-1.0]), torch.tensor([3.0]), 8, symmetric=False)
    assert scale.item() == pytest.approx(4.0 / 255)
    assert offset.item() == round(1.0 / (4.0 / 255)) - 128
    q = quantize(torch.tensor([-1.0, 0.0, 3.0]), scale, offset, 8)
    assert q.tolist() == [-128, int(offset.item()), 127]


def test_asymmetric_range_includes_zero() -> None:
    scale, offset = scale_offset(torch.tensor([2.0]), torch.tensor([4.0]), 8, symmetric=False)
    assert scale.item() == pytest.approx(4.0 / 255)
    assert offset.item() == -128  # min widened to 0: zero is exactly representable
    assert dequantize(quantize(torch.tensor([0.0]), scale, offset, 8), scale, offset).item() == 0.0


def test_symmetric_scale_and_int4_range() -> None:
    scale, offset = scale_offset(torch.tensor([-2.0]), torch.tensor([1.0]), 8, symmetric=True)
    assert scale.item() == pytest.approx(2.0 / 127) and offset.item() == 0
    scale4, _ = scale_offset(torch.tensor([-2.0]), torch.tensor([1.0]), 4, symmetric=True)
    assert scale4.item() == pytest.approx(2.0 / 7)
    assert int_range(4) == (-8, 7) and int_range(8) == (-128, 127)
    with pytest.raises(ValueError, match="bits"):
        int_range(3)


def test_zero_range_gets_a_positive_scale() -> None:
    for symmetric in (True, False):
        scale, offset = scale_offset(torch.zeros(3), torch.zeros(3), 8, symmetric)
        assert torch.all(scale > 0) and torch.isfinite(scale).all()
        assert torch.equal(dequantize(quantize(torch.zeros(3), scale, offset, 8), scale, offset), torch.zeros(3))


@pytest.mark.parametrize(("scope", "bits", "symmetric", "group"), [
    ("per_channel", 8, True, None), ("per_channel", 8, False, None),
    ("per_group", 4, True, 16), ("per_group", 4, False, 32), ("per_channel", 4, True, None)])
def test_weight_round_trip_within_half_a_step(scope: str, bits: int, symmetric: bool, group: int | None) -> None:
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    q, scale, offset = quantize_weight(weight, scope, bits, symmetric, group)
    assert q.dtype == torch.int8 and q.shape == weight.shape
    qmin, qmax = int_range(bits)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    assert scale.dtype == torch.float32 and scale.shape == ((24, 1) if group is None else (24, 64 // group))
    if symmetric:
        assert torch.count_nonzero(offset) == 0
    step = scale.repeat_interleave(64 // scale.shape[1], dim=1)
    error = (dequantize_weight(q, scale, offset) - weight.float()).abs()
    assert torch.all(error <= step / 2 + 1e-6)


def test_per_group_width_must_divide() -> None:
    with pytest.raises(ValueError, match="group_size"):
        quantize_weight(torch.randn(4, 48), "per_group", 4, True, 32)


def test_per_token_error_bounded_per_row() -> None:
    x = torch.randn(5, 32) * torch.arange(1, 6).unsqueeze(1)
    error = (fake_quantize_per_token(x) - x).abs()
    step = x.abs().amax(dim=1, keepdim=True) / 127
    assert torch.all(error <= step / 2 + 1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=40),
       st.booleans(), st.sampled_from([4, 8]))
def test_round_trip_property(values: list[float], symmetric: bool, bits: int) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    scale, offset = scale_offset(x.min().reshape(1), x.max().reshape(1), bits, symmetric)
    error = (dequantize(quantize(x, scale, offset, bits), scale, offset) - x).abs()
    assert torch.all(error <= scale / 2 * (1 + 1e-5) + 1e-6)


def test_scales_are_representable_in_the_model_dtype_and_the_integers_use_them() -> None:
    from quantjob.worker.quantizers import quantize_weight, representable

    torch.manual_seed(0)
    weight = (torch.randn(16, 32) * 0.05).to(torch.bfloat16)
    q, scale, _offset = quantize_weight(weight, "per_channel", 8, True)
    assert torch.equal(scale, scale.to(torch.bfloat16).float())  # saved bf16 == used scale
    assert torch.equal(q, torch.clamp(torch.round(weight.float() / scale), -128, 127).to(torch.int8))
    assert torch.all((q.float() * scale - weight.float()).abs() <= scale / 2 + 1e-7)
    # fp16 never rounds a tiny scale to zero
    tiny = representable(torch.tensor([1e-9]), torch.float16)
    assert float(tiny) > 0 and torch.equal(tiny, tiny.to(torch.float16).float())
    assert torch.equal(representable(torch.tensor([0.123456789]), None), torch.tensor([0.123456789]))
