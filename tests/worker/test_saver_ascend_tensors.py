"""Record -> ascend tensors: names, dtypes, shapes per scheme, and the math the NPU runs on them.

``reference_linear`` is a tiny independent quantizer (min/max, round-to-nearest) used by the
saver tests to build ``QuantizedLinear`` records from random float linears.
"""

from __future__ import annotations

import pytest
import torch

from quantjob.worker.loop.records import QuantizedLinear, Scheme
from quantjob.worker.savers.ascend_tensors import (
    ascend_tensors,
    deq_scale_for,
    deq_scale_value,
    model_quant_type,
)


def reference_linear(name: str, weight: torch.Tensor, bias: torch.Tensor | None, scheme: Scheme, *,
                     calib: torch.Tensor | None = None, symmetric: bool = True,
                     group_size: int | None = None) -> QuantizedLinear:
    """Quantize one float linear: W ~ (q - offset) * scale; static x_q = round(x/s) + o."""
    w = weight.to(torch.float32)
    out_features, in_features = w.shape
    bits = 4 if scheme == "W4A16" else 8
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    groups = w.reshape(out_features, -1, group_size) if group_size else w.reshape(out_features, 1, -1)
    if symmetric:
        scale = (groups.abs().amax(-1) / qmax).clamp(min=1e-8)
        offset = torch.zeros_like(scale)
    else:
        lo, hi = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=1e-8)
        offset = torch.round(qmin - lo / scale)
    q = torch.clamp(torch.round(groups / scale[..., None]) + offset[..., None], qmin, qmax)
    record = QuantizedLinear(name=name, scheme=scheme, weight_q=q.reshape(out_features, in_features).to(torch.int8),
                             weight_scale=scale, weight_offset=offset, bias=bias, dtype=weight.dtype,
                             group_size=group_size)
    if scheme == "W8A8":
        assert calib is not None
        lo, hi = calib.float().min().clamp(max=0), calib.float().max().clamp(min=0)
        record.input_scale = ((hi - lo) / 255).reshape(1)
        record.input_offset = torch.round(-128 - lo / record.input_scale).reshape(1)
    return record


def by_suffix(q: QuantizedLinear) -> dict[str, tuple[str, torch.Tensor]]:
    return {item.name.removeprefix(q.name + "."): (item.desc, item.tensor) for item in ascend_tensors(q)}


def _linear(out_features: int = 48, in_features: int = 64, dtype: torch.dtype = torch.bfloat16,
            bias: bool = True, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(out_features, in_features, generator=gen) * 0.1).to(dtype)
    return weight, ((torch.randn(out_features, generator=gen) * 0.5).to(dtype) if bias else None)


@pytest.mark.parametrize("dtype, deq_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.int64)])
def test_w8a8_static_layout(dtype: torch.dtype, deq_dtype: torch.dtype) -> None:
    weight, bias = _linear(dtype=dtype)
    q = reference_linear("m.q", weight, bias, "W8A8", calib=torch.randn(16, 64) + 0.3)
    got = {k: (d, t.dtype, tuple(t.shape)) for k, (d, t) in by_suffix(q).items()}
    assert got == {
        "weight": ("W8A8", torch.int8, (48, 64)),
        "input_scale": ("W8A8", dtype, (1,)),
        "input_offset": ("W8A8", torch.int8, (1,)),
        "deq_scale": ("W8A8", deq_dtype, (48,)),
        "quant_bias": ("W8A8", torch.int32, (48,)),
        "weight_scale": ("W8A8", dtype, (48, 1)),
        "weight_offset": ("W8A8", dtype, (48, 1)),
        "bias": ("FLOAT", dtype, (48,)),
    }
    tensors = by_suffix(q)
    assert torch.equal(tensors["bias"][1], bias)   # float bias kept bit for bit
    assert torch.equal(tensors["weight"][1], q.weight_q)


def test_fp16_deq_scale_is_float32_bits_widened_to_int64() -> None:
    deq = torch.tensor([0.0125, 3.5e-4, 1.0], dtype=torch.float32)
    saved = deq_scale_for(deq, torch.float16)
    assert saved.dtype == torch.int64
    expected = [int.from_bytes(torch.tensor([v]).numpy().tobytes(), "little", signed=True) for v in deq.tolist()]
    assert saved.tolist() == expected
    assert torch.equal(deq_scale_value(saved), deq)
    assert torch.equal(deq_scale_for(deq, torch.bfloat16), deq)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_w8a8_integer_matmul_reproduces_the_float_layer(dtype: torch.dtype) -> None:
    """y = deq_scale * (x_q @ W_q^T + quant_bias) as npu_quant_matmul computes it."""
    weight, bias = _linear(dtype=dtype, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(32, 64, generator=gen) * 2 + 0.7             # asymmetric range: offset != 0
    q = reference_linear("m.q", weight, bias, "W8A8", calib=x)
    assert q.input_offset is not None and q.input_scale is not None and int(q.input_offset.item()) != 0
    t = by_suffix(q)
    deq = deq_scale_value(t["deq_scale"][1]).double()
    x_q = torch.clamp(torch.round(x / q.input_scale) + q.input_offset, -128, 127).double()
    y_npu = deq * (x_q @ t["weight"][1].double().T + t["quant_bias"][1].double())
    # the same quantized operands in float (fake quant): y_npu may differ only by the bias rounding
    x_dq = (x_q - q.input_offset.double()) * q.input_scale.double()
    w_dq = t["weight"][1].double() * q.weight_scale.double()
    y_fq = x_dq @ w_dq.T + bias.double()
    assert (y_npu - y_fq).abs().max() <= (0.5 * deq).max() * 1.001
    # and the float layer within the quantization error the scales imply
    y = x.double() @ weight.double().T + bias.double()
    bound = (x.abs().double() @ (0.5 * q.weight_scale.double().expand(-1, 64)).T
             + 0.5 * q.input_scale.double() * weight.double().abs().sum(1) + deq)
    assert bool(((y_npu - y).abs() <= bound).all())


@pytest.mark.parametrize("scheme", ["W8A16", "W4A16"])
def test_weight_only_asymmetric_dequantizes_with_the_npu_sign(scheme: Scheme) -> None:
    """npu_weight_quant_batchmatmul: W = (weight + weight_offset) * weight_scale."""
    weight, bias = _linear(dtype=torch.float32, bias=False, seed=5)
    weight = weight + 0.05                                          # skewed rows: offsets != 0
    group = 16 if scheme == "W4A16" else None
    q = reference_linear("m.q", weight, bias, scheme, symmetric=False, group_size=group)
    assert bool((q.weight_offset != 0).any())
    t = by_suffix(q)
    w, scale, offset = t["weight"][1].float(), t["weight_scale"][1], t["weight_offset"][1]
    repeat = group or 64
    w_dq = (w + offset.repeat_interleave(repeat, dim=1)) * scale.repeat_interleave(repeat, dim=1)
    assert bool(((w_dq - weight).abs() <= 0.5 * scale.repeat_interleave(repeat, dim=1) + 1e-6).all())


def test_weight_only_and_dynamic_layouts() -> None:
    weight, bias = _linear(dtype=torch.bfloat16)
    dyn = by_suffix(reference_linear("m.q", weight, bias, "W8A8_DYNAMIC"))
    assert {k: (d, t.dtype, tuple(t.shape)) for k, (d, t) in dyn.items()} == {
        "weight": ("W8A8_DYNAMIC", torch.int8, (48, 64)),
        "weight_scale": ("W8A8_DYNAMIC", torch.bfloat16, (48, 1)),
        "weight_offset": ("W8A8_DYNAMIC", torch.bfloat16, (48, 1)),
        "bias": ("FLOAT", torch.bfloat16, (48,)),
    }
    w16 = by_suffix(reference_linear("m.q", weight, None, "W8A16"))
    assert {k: (d, t.dtype, tuple(t.shape)) for k, (d, t) in w16.items()} == {
        "weight": ("W8A16", torch.int8, (48, 64)),
        "weight_scale": ("W8A16", torch.bfloat16, (48, 1)),
        "weight_offset": ("W8A16", torch.bfloat16, (48, 1)),
    }
    # symmetric zero offsets are +0.0, not -0.0
    assert w16["weight_offset"][1].view(torch.int16).eq(0).all()
    w4 = by_suffix(reference_linear("m.q", weight, None, "W4A16", group_size=32))
    assert {k: (d, t.dtype, tuple(t.shape)) for k, (d, t) in w4.items()} == {
        "weight": ("W4A16", torch.int8, (48, 64)),
        "weight_scale": ("W4A16", torch.bfloat16, (48, 2)),
        "weight_offset": ("W4A16", torch.bfloat16, (48, 2)),
    }
    assert int(w4["weight"][1].min()) >= -8 and int(w4["weight"][1].max()) <= 7


def test_bad_records_are_refused() -> None:
    weight, _ = _linear(dtype=torch.float32, seed=1)
    asym = reference_linear("m.q", weight + 0.1, None, "W8A16", symmetric=False)
    asym.scheme = "W8A8_DYNAMIC"
    with pytest.raises(ValueError, match="symmetric"):
        ascend_tensors(asym)
    static = reference_linear("m.q", weight, None, "W8A16")
    static.scheme = "W8A8"
    with pytest.raises(ValueError, match="input_scale"):
        ascend_tensors(static)
    w4 = reference_linear("m.q", weight, None, "W8A16", group_size=32)
    w4.scheme = "W4A16"
    with pytest.raises(ValueError, match="-8..7"):
        ascend_tensors(w4)


def test_model_quant_type_follows_msmodelslim_priority() -> None:
    assert model_quant_type({"FLOAT"}) == "FLOAT"
    assert model_quant_type({"FLOAT", "W8A16", "W8A8_DYNAMIC"}) == "W8A8_DYNAMIC"
    assert model_quant_type({"W8A8_DYNAMIC", "W8A8", "FLOAT"}) == "W8A8"
    assert model_quant_type({"W4A16", "FLOAT"}) == "W4A16"
