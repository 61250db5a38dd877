"""What the engine hands to a saver: one decoder layer's tensors, processed.

This is the only interface between the quantization loop and the savers: the loop never
knows a file format, a saver never runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Scheme = Literal["W8A8", "W8A8_DYNAMIC", "W8A16", "W4A16"]


@dataclass
class QuantizedLinear:
    """One quantized linear, in plain quantization terms (no file-format conventions).

    Dequantization: ``W ~ (weight_q - weight_offset) * weight_scale`` (per row, or per group of
    ``group_size`` input columns when ``weight_scale`` is [out, in // group_size]).
    Static activations: ``x_q = clamp(round(x / input_scale) + input_offset, -128, 127)``.
    """

    name: str                          # module name, e.g. "model.layers.0.self_attn.q_proj"
    scheme: Scheme
    weight_q: torch.Tensor             # int8 [out, in]; int4 values (-8..7) in int8 storage for W4A16
    weight_scale: torch.Tensor         # float32 [out, 1] (per channel) or [out, in // group_size]
    weight_offset: torch.Tensor        # float32, same shape as weight_scale; zeros when symmetric
    bias: torch.Tensor | None          # the float bias in the model dtype, or None
    dtype: torch.dtype                 # the model's float dtype (bf16 / fp16 / fp32)
    input_scale: torch.Tensor | None = None   # float32 [1], static activations only (W8A8)
    input_offset: torch.Tensor | None = None  # float32 [1], integer-valued, static activations only
    group_size: int | None = None
    # How the config asked for it (a format that records the scheme, e.g. compressed-tensors, needs
    # it even when every zero point came out zero). None: read from the zero points.
    weight_symmetric: bool | None = None
    act_symmetric: bool | None = None

    def symmetric_weights(self) -> bool:
        if self.weight_symmetric is not None:
            return self.weight_symmetric
        return not bool((self.weight_offset != 0).any())

    def symmetric_activations(self) -> bool:
        """Static activations only (dynamic per-token activations are always symmetric)."""
        if self.act_symmetric is not None:
            return self.act_symmetric
        return self.input_offset is None or not bool((self.input_offset != 0).any())


@dataclass
class LayerOutput:
    """Everything one step of the loop produced for the saver.

    ``index`` is the decoder layer index. ``float_tensors`` maps full tensor names to tensors kept
    in float (norms, excluded linears, ...), exactly as read from the source checkpoint, plus any
    float tensor a processor adds (e.g. a norm's ``bias`` from asymmetric smoothing); every format
    writes them all, under their names. The
    tensors outside the decoder layers (embedding, final norm, lm_head) never pass through here:
    savers copy them from the source checkpoint (``OutputSaver.finish``).
    """

    index: int
    quantized: list[QuantizedLinear] = field(default_factory=list)
    float_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
