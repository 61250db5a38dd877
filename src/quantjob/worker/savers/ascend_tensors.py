"""Plain quantization terms -> the tensors vllm-ascend loads (msModelSlim's ascendv1 layout).

Conventions (sources in ``docs/ascend-format-notes.md``):

- static activations: ``x_q = clamp(round(x / input_scale) + input_offset)``; the NPU computes
  ``y = deq_scale * (x_q @ W_q^T + quant_bias)`` (``npu_quant_matmul``), so
  ``deq_scale = input_scale * weight_scale`` and
  ``quant_bias = round(b / deq_scale) - input_offset * sum_k W_q[:, k]``;
- weight-only: the NPU dequantizes ``(W_q + weight_offset) * weight_scale``
  (``npu_weight_quant_batchmatmul``), the opposite sign of the record's zero point, so the saved
  ``weight_offset`` is ``-record.weight_offset``;
- ``deq_scale`` is float32 for bf16 models and, for every other model dtype, the float32 bit
  pattern read as int32 and widened to int64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantjob.worker.loop.records import QuantizedLinear
from quantjob.worker.savers.formats import FLOAT  # one tag for every format

# msModelSlim's AscendV1Saver.QUANT_TYPE_PRIORITY (later = wins as model_quant_type), with W4A16
# (which that list lacks) placed after W8A16: fewer weight bits rank higher there.
QUANT_TYPE_PRIORITY = ("FLOAT", "W16A16S", "W8A16", "W4A16", "W8A8_DYNAMIC", "W8A8_MIX", "W8A8")


@dataclass(frozen=True)
class AscendTensor:
    name: str          # full tensor name, e.g. "model.layers.0.self_attn.q_proj.deq_scale"
    desc: str          # its entry in quant_model_description.json: "W8A8", ..., "FLOAT"
    tensor: torch.Tensor


def deq_scale_for(deq: torch.Tensor, model_dtype: torch.dtype) -> torch.Tensor:
    """float32 for bf16 models; otherwise the float32 bits as int32, widened to int64."""
    deq = deq.to(torch.float32).contiguous()
    if model_dtype == torch.bfloat16:
        return deq
    return deq.view(torch.int32).to(torch.int64)


def deq_scale_value(saved: torch.Tensor) -> torch.Tensor:
    """The float32 deq_scale back from either saved form."""
    if saved.dtype == torch.int64:
        return saved.to(torch.int32).view(torch.float32)
    return saved.to(torch.float32)


def quant_bias_for(weight_q: torch.Tensor, input_offset: torch.Tensor, deq_scale: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """int32 [out]: ``round(b / deq_scale) - input_offset * sum_k W_q[:, k]``.

    The zero-point correction is an exact integer (int64), so it stays exact for wide layers
    where a float32 sum would round.
    """
    out_features = weight_q.shape[0]
    float_bias = bias.to(torch.float32) if bias is not None else torch.zeros(out_features)
    rounded = torch.round(float_bias / deq_scale.to(torch.float32)).to(torch.int64)
    # exact integer row sums, a block of rows at a time (a whole wide copy of a large weight would be
    # 4-8x its size in memory, on the commit thread, while the loop runs the next step); int32 holds
    # any sum of up to 2**24 int8 values (|sum| <= 128 * 2**24 = 2**31), twice as fast as int64
    wide = torch.int32 if weight_q.shape[1] <= 1 << 24 else torch.int64
    rows = max(1, (1 << 20) // max(1, weight_q.shape[1]))
    row_sums = torch.cat([block.sum(dim=1, dtype=wide) for block in weight_q.split(rows)]).to(torch.int64) \
        if out_features else torch.zeros(0, dtype=torch.int64)
    correction = row_sums * int(input_offset.reshape(-1)[0].item())
    result = rounded - correction
    if result.abs().max().item() > 2**31 - 1:
        raise ValueError("quant_bias overflows int32: the bias is too large for the scale")
    return result.to(torch.int32)


def _negated(offset: torch.Tensor) -> torch.Tensor:
    """``-offset`` with +0.0 for zeros (``torch.neg`` would give -0.0, a different bit pattern)."""
    return torch.zeros_like(offset) - offset


def _check(q: QuantizedLinear) -> None:
    out_features, in_features = q.weight_q.shape
    if q.weight_q.dtype != torch.int8:
        raise ValueError(f"{q.name}: weight_q must be int8, got {q.weight_q.dtype}")
    if q.weight_scale.shape != q.weight_offset.shape or q.weight_scale.shape[0] != out_features:
        raise ValueError(f"{q.name}: weight_scale {tuple(q.weight_scale.shape)} and weight_offset "
                         f"{tuple(q.weight_offset.shape)} must both be [{out_features}, groups]")
    if q.scheme == "W4A16":
        low, high = int(q.weight_q.min().item()), int(q.weight_q.max().item())
        if low < -8 or high > 7:
            raise ValueError(f"{q.name}: W4A16 weight values must lie in -8..7, got {low}..{high}")
    groups = q.weight_scale.shape[1]
    if groups != 1 and (q.group_size is None or q.group_size * groups != in_features):
        raise ValueError(f"{q.name}: weight_scale has {groups} groups over {in_features} inputs "
                         f"but group_size is {q.group_size}")
    if q.scheme in ("W8A8", "W8A8_DYNAMIC"):
        if groups != 1:
            raise ValueError(f"{q.name}: {q.scheme} needs per-channel weight scales, got {groups} groups")
        if bool((q.weight_offset != 0).any()):
            raise ValueError(f"{q.name}: {q.scheme} needs symmetric weights (weight_offset all zero)")
    if q.scheme == "W8A8" and (q.input_scale is None or q.input_offset is None):
        raise ValueError(f"{q.name}: W8A8 (static) needs input_scale and input_offset")


def ascend_tensors(q: QuantizedLinear) -> list[AscendTensor]:
    """The tensors one quantized linear contributes to the output, in a fixed order."""
    _check(q)
    dtype = q.dtype
    out: list[AscendTensor] = [AscendTensor(f"{q.name}.weight", q.scheme, q.weight_q.contiguous())]
    if q.scheme == "W8A8":
        assert q.input_scale is not None and q.input_offset is not None
        deq = (q.input_scale.to(torch.float32).reshape(1, 1)
               * q.weight_scale.to(torch.float32)).reshape(-1)
        out += [
            AscendTensor(f"{q.name}.input_scale", q.scheme, q.input_scale.reshape(1).to(dtype)),
            AscendTensor(f"{q.name}.input_offset", q.scheme, q.input_offset.reshape(1).round().to(torch.int8)),
            AscendTensor(f"{q.name}.deq_scale", q.scheme, deq_scale_for(deq, dtype)),
            AscendTensor(f"{q.name}.quant_bias", q.scheme,
                         quant_bias_for(q.weight_q, q.input_offset, deq, q.bias)),
        ]
    out += [
        AscendTensor(f"{q.name}.weight_scale", q.scheme, q.weight_scale.to(dtype).contiguous()),
        AscendTensor(f"{q.name}.weight_offset", q.scheme, _negated(q.weight_offset).to(dtype).contiguous()),
    ]
    if q.bias is not None:
        out.append(AscendTensor(f"{q.name}.bias", FLOAT, q.bias.contiguous()))
    return out


def model_quant_type(descs: set[str]) -> str:
    """The description's ``model_quant_type``: the highest-priority type present."""
    ranked = [d for d in QUANT_TYPE_PRIORITY if d in descs]
    return ranked[-1] if ranked else FLOAT
