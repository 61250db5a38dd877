"""Quantization math: scale/offset formulas, round trips within half a step, edge cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantjob.worker.loop import quantizers
from quantjob.worker.loop.quantizers import (
    dequantize,
    dequantize_weight,
    expand_groups,
    fake_quantize_per_token,
    int_range,
    map_row_blocks,
    quantize,
    quantize_weight,
    scale_offset,
)
from quantjob.worker.loop.smoothing import divide_rows, scale_columns


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
    from quantjob.worker.loop.quantizers import quantize_weight, representable

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


# --- weights in row blocks: the same bits as the whole-tensor arithmetic -----------------------------

@pytest.mark.parametrize("block_elements", [1, 7 * 5, 1 << 16])  # one row, several rows (and a short last), all
@pytest.mark.parametrize(("scope", "group"), [("per_channel", None), ("per_group", 4), ("per_tensor", None)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_blocked_dequantization_gives_the_whole_tensor_bits(monkeypatch: pytest.MonkeyPatch, block_elements: int,
                                                            scope: str, group: int | None,
                                                            dtype: torch.dtype) -> None:
    monkeypatch.setattr(quantizers, "BLOCK_ELEMENTS", block_elements)
    weight = (torch.randn(23, 8, generator=torch.Generator().manual_seed(3)) * 0.05).to(dtype)
    q, scale, offset = quantize_weight(weight, scope, 8, symmetric=False, group_size=group)
    cols = q.shape[1]
    whole = q.float().sub_(expand_groups(offset, cols)).mul_(expand_groups(scale, cols))
    assert torch.equal(dequantize_weight(q, scale, offset), whole)
    blocked = dequantize_weight(q, scale, offset, dtype)
    assert blocked.dtype == dtype and torch.equal(blocked, whole.to(dtype))


@pytest.mark.parametrize("block_elements", [1, 3 * 16, 1 << 16])
def test_blocked_folds_give_the_whole_tensor_bits(monkeypatch: pytest.MonkeyPatch, block_elements: int) -> None:
    monkeypatch.setattr(quantizers, "BLOCK_ELEMENTS", block_elements)
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(37, 16, generator=gen).to(torch.bfloat16)
    columns, rows = torch.rand(16, generator=gen) + 0.1, torch.rand(37, generator=gen) + 0.1
    assert torch.equal(scale_columns(weight, columns), (weight.float() * columns).to(torch.bfloat16))
    assert torch.equal(divide_rows(weight, rows), (weight.float() / rows.unsqueeze(1)).to(torch.bfloat16))


def test_map_row_blocks_hands_each_row_to_one_block_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantizers, "BLOCK_ELEMENTS", 10)  # 10 elements of 4 columns: 2 rows a block
    seen: list[tuple[int, int]] = []

    def step(block: torch.Tensor, rows: slice) -> None:
        assert block.dtype == torch.float32 and block.shape == (rows.stop - rows.start, 4)
        seen.append((rows.start, rows.stop))
        block.add_(1)

    out = map_row_blocks(torch.zeros(5, 4, dtype=torch.bfloat16), torch.bfloat16, step)
    assert seen == [(0, 2), (2, 4), (4, 5)]
    assert out.dtype == torch.bfloat16 and torch.equal(out, torch.ones(5, 4, dtype=torch.bfloat16))


def test_map_row_blocks_takes_the_whole_tensor_off_cpu() -> None:
    seen: list[slice] = []
    map_row_blocks(torch.empty(300, 1000, device="meta"), torch.bfloat16, lambda _block, rows: seen.append(rows))
    assert seen == [slice(0, 300)]
