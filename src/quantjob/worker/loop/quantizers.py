"""Quantization math as plain functions: min/max -> scale/offset, quantize, dequantize.

Conventions (``quantjob.worker.loop.records.QuantizedLinear``; the saved form: ``docs/ascend-format-notes.md``):

- symmetric, ``b`` bits: ``scale = max(|min|, |max|) / (2^(b-1) - 1)``, ``offset = 0``;
- asymmetric: the range is widened to include 0 (so 0 is exact), ``scale = (max - min) / (2^b - 1)``,
  ``offset = round(-min / scale) - 2^(b-1)``;
- ``q = clamp(round(x / scale) + offset, -2^(b-1), 2^(b-1) - 1)``, ``x ~ (q - offset) * scale``.

Everything is computed in float32. A zero range gets a tiny positive scale (``SCALE_FLOOR`` times
the largest magnitude, or ``SCALE_FLOOR`` itself) so nothing divides by zero. Given the model's
``dtype``, a scale is first rounded to a value that dtype holds exactly, and the offset and the
integers are computed with that scale: the saved files then hold the very scales the integers were
made with, and ``deq_scale = input_scale * weight_scale`` is exact in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SCALE_FLOOR = 1e-8
# Elements of one float32 block in ``map_row_blocks`` (256 KiB: it stays in a core's cache).
BLOCK_ELEMENTS = 1 << 16


def int_range(bits: int) -> tuple[int, int]:
    """The signed integer range of ``bits`` bits: (-2^(b-1), 2^(b-1) - 1)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def representable(scale: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``scale`` (float32) rounded UP to a value ``dtype`` holds (never below its smallest normal).

    Up, so the observed range still fits in the integers: nothing is clipped by the rounding.
    """
    if dtype is None or dtype == torch.float32:
        return scale
    narrow = torch.clamp(scale, min=float(torch.finfo(dtype).tiny)).to(dtype)
    up = torch.nextafter(narrow, torch.full_like(narrow, float("inf")))
    return torch.where(narrow.float() < scale, up, narrow).float()


def scale_offset(minimum: torch.Tensor, maximum: torch.Tensor, bits: int,
                 symmetric: bool, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and (integer-valued, float32) offset from observed ranges of any shape.

    ``dtype``: the model dtype the scale will be saved in (see the module docstring).
    """
    qmin, qmax = int_range(bits)
    lo = torch.clamp(minimum.float(), max=0.0)
    hi = torch.clamp(maximum.float(), min=0.0)
    if symmetric:
        amax = torch.maximum(lo.abs(), hi)
        scale = amax / qmax
        floor = torch.clamp(amax * SCALE_FLOOR, min=SCALE_FLOOR)
        scale = representable(torch.maximum(scale, floor), dtype)
        return scale, torch.zeros_like(scale)
    span = hi - lo
    scale = span / (qmax - qmin)
    floor = torch.clamp(torch.maximum(lo.abs(), hi) * SCALE_FLOOR, min=SCALE_FLOOR)
    scale = representable(torch.maximum(scale, floor), dtype)
    offset = torch.round(-lo / scale) + qmin
    return scale, torch.clamp(offset, qmin, qmax)


def float_copy(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a float32 tensor of its own (never ``x`` itself), for in-place arithmetic."""
    return x.clone() if x.dtype == torch.float32 else x.float()


def _integers(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int, *,
              scratch: bool = False) -> torch.Tensor:
    """``clamp(round(x / scale) + offset)`` as integer-valued float32, in one buffer: a copy of
    ``x``, or ``x`` itself when it is a float32 ``scratch`` buffer the caller gives up.

    In-place arithmetic is the same arithmetic (the same bits) without a fresh buffer per step,
    which on a large weight costs more than the step itself.
    """
    qmin, qmax = int_range(bits)
    buffer = x if scratch and x.dtype == torch.float32 else float_copy(x)
    return buffer.div_(scale).round_().add_(offset).clamp_(qmin, qmax)


def quantize(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers (int8 storage, also for int4) of ``x`` under broadcastable ``scale``/``offset``."""
    return _integers(x, scale, offset, bits).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, *, scratch: bool = False) -> torch.Tensor:
    """Float32 values ``(q - offset) * scale``: in a copy of ``q``, or in ``q`` itself when it is a
    float32 ``scratch`` buffer the caller gives up (as ``_integers``)."""
    buffer = q if scratch and q.dtype == torch.float32 else float_copy(q)
    return buffer.sub_(offset.float()).mul_(scale.float())


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize then dequantize, returned in ``x``'s dtype (the integers stay in float32: they are
    exact there, so this equals ``dequantize(quantize(...))`` bit for bit)."""
    return _integers(x, scale, offset, bits).sub_(offset).mul_(scale).to(x.dtype)


def weight_minmax(weight: torch.Tensor, scope: str, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max (float32) of a ``[out, in]`` weight: ``[out, 1]`` per channel, ``[out, in // g]`` per
    group. Computed in the weight's own dtype: min and max are exact in any dtype."""
    w = weight  # (amin and amax apart: torch.aminmax along a dim is several times slower on CPU)
    if scope == "per_channel":
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    elif scope == "per_group":
        if not group_size or w.shape[1] % group_size:
            raise ValueError(f"per_group needs a group_size dividing the input width {w.shape[1]}, got {group_size}")
        grouped = w.reshape(w.shape[0], w.shape[1] // group_size, group_size)
        lo, hi = grouped.amin(dim=2), grouped.amax(dim=2)
    elif scope == "per_tensor":
        lo, hi = w.amin().reshape(1, 1), w.amax().reshape(1, 1)
    else:
        raise ValueError(f"unknown weight scope {scope!r}; use per_channel, per_group or per_tensor")
    return lo.float(), hi.float()


def expand_groups(params: torch.Tensor, in_features: int) -> torch.Tensor:
    """Broadcast ``[out, in // g]`` (or ``[out, 1]``) parameters to ``[out, in]``."""
    groups = params.shape[1]
    if groups == 1:
        return params
    return params.repeat_interleave(in_features // groups, dim=1)


def quantize_weight(weight: torch.Tensor, scope: str, bits: int, symmetric: bool,
                    group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 weight ``[out, in]``, float32 scale, float32 offset) from the weight's own min/max.

    The scale is representable in the weight's dtype (the model dtype it is saved in).
    """
    w = float_copy(weight)  # one float32 buffer: the ranges are read from it, then it becomes the integers
    lo, hi = weight_minmax(w, scope, group_size)
    scale, offset = scale_offset(lo, hi, bits, symmetric, weight.dtype)
    q = _integers(w, expand_groups(scale, w.shape[1]), expand_groups(offset, w.shape[1]), bits,
                  scratch=True).to(torch.int8)
    return q, scale, offset


def map_row_blocks(x: torch.Tensor, dtype: torch.dtype,
                   step: Callable[[torch.Tensor, slice], object]) -> torch.Tensor:
    """A ``dtype`` copy of the 2-D ``x`` after ``step(block, rows)``, which changes a float32 copy of
    ``x[rows]`` in place; on cpu, block by block of rows.

    A weight's float32 arithmetic (a fold, a dequantization) done on the whole tensor at once
    sends the float32 copy, each step's result and the rounding through memory, several full passes
    over a buffer twice the weight's size. One block at a time, the float32 copy stays in the
    core's cache and memory sees the input read and the output written: less time, and less of the
    memory bandwidth that the ranks on one host share. Elementwise arithmetic gives the same bits
    on a block as on the whole tensor, so ``step`` must be elementwise along the rows (a row's
    result depends on that row alone). On an accelerator there is no such cache to keep and each
    block would cost kernel launches: one block.
    """
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    rows = x.shape[0] if x.device.type != "cpu" else max(1, BLOCK_ELEMENTS // max(1, x.shape[1]))
    scratch = None if dtype == torch.float32 else torch.empty((min(rows, x.shape[0]), x.shape[1]),
                                                             dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], rows):
        part = slice(start, min(start + rows, x.shape[0]))
        block = out[part] if scratch is None else scratch[:part.stop - start]
        block.copy_(x[part])
        step(block, part)
        if scratch is not None:
            out[part].copy_(block)
    return out


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[out, in]`` weight ``(q - offset) * scale`` (float32 arithmetic, then ``dtype``) from int8
    storage and per-channel or per-group parameters."""
    cols = q.shape[1]
    scale, offset = scale.float(), offset.float()

    def of_rows(params: torch.Tensor, rows: slice) -> torch.Tensor:  # [1, g]: per tensor, every row's
        return expand_groups(params if params.shape[0] == 1 else params[rows], cols)

    def step(block: torch.Tensor, rows: slice) -> None:
        dequantize(block, of_rows(scale, rows), of_rows(offset, rows), scratch=True)

    return map_row_blocks(q, dtype, step)


def fake_quantize_per_token(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Dynamic symmetric per-token quantization (the last dim is one token's features)."""
    amax = x.float().abs().amax(dim=-1, keepdim=True)
    scale, offset = scale_offset(-amax, amax, bits, symmetric=True)
    return fake_quantize(x, scale, offset, bits)
