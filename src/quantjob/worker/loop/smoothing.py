"""Smoothing math (SmoothQuant-style outlier migration) as plain functions over tensors.

A smoothing site feeds activations ``x`` (``[tokens, d]``) into linears ``y = x W^T + b``. For any
positive per-channel scale ``s`` (and, in the asymmetric mode, a per-channel shift ``z``)::

    y = ((x - z) / s) (W diag(s))^T + (b + W z)

so dividing the producer of ``x`` by ``s`` (and subtracting ``z / s``) while multiplying the
columns of every consumer by ``s`` (and adding ``W z`` to its bias) leaves the function unchanged
and moves the activation outliers into the weights. The scales follow SmoothQuant
(Xiao et al. 2023, eq. 4) with msModelSlim's generalisation to separate exponents::

    s_j = max(|x_j|)^alpha / max(|W_:,j|)^beta            (iter_smooth: beta = 1 - alpha)

Everything is float32; folded weights are rounded once to their own dtype. The derivation, the
sources and the choices made here are in ``docs/algorithms.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from quantjob.families.adapter import AttentionHeads
from quantjob.worker.loop.observers import ActivationStats
from quantjob.worker.loop.quantizers import (
    dequantize_weight,
    int_range,
    map_row_blocks,
    quantize_weight,
    scale_offset,
)

WEIGHT_FLOOR = 1e-5       # msModelSlim clamps weight maxima (and flex scales) to this
SEARCH_GRID = tuple(k / 20 for k in range(21))   # msModelSlim's alpha/beta grid: 0.0, 0.05, ..., 1.0
QMAX = 127                # per-token search quantization: symmetric int8 in [-127, 127], as msModelSlim's


# --- statistics -------------------------------------------------------------------------------

def act_absmax(stats: ActivationStats) -> torch.Tensor:
    """Per-channel ``max |x|`` from the observed range (float32 ``[d]``)."""
    return torch.maximum(stats.minimum.abs(), stats.maximum.abs())


def act_midpoint(stats: ActivationStats) -> torch.Tensor:
    """Per-channel midpoint of the observed range: the asymmetric mode's shift ``z``."""
    return (stats.minimum + stats.maximum) / 2


def shifted_absmax(stats: ActivationStats, shift: torch.Tensor) -> torch.Tensor:
    """Per-channel ``max |x - z|`` over every observed token, exactly: the range's far end."""
    return torch.maximum(stats.maximum - shift, shift - stats.minimum)


def mapped_stats(stats: ActivationStats, scale: torch.Tensor, shift: torch.Tensor | None = None) -> ActivationStats:
    """The range of ``(x - z) / s`` given the range of ``x`` (``s > 0`` keeps min below max)."""
    lo, hi = stats.minimum, stats.maximum
    if shift is not None:
        lo, hi = lo - shift, hi - shift
    return ActivationStats(lo / scale, hi / scale)


def weight_absmax(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-input-channel ``max |W|`` over the rows of every weight (``[out, d]`` each), at least
    ``WEIGHT_FLOOR`` (float32 ``[d]``)."""
    columns = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
    return columns.clamp(min=WEIGHT_FLOOR)


def weight_signed_max(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-input-channel signed ``max W`` over the rows of every weight, at least ``WEIGHT_FLOOR``:
    what msModelSlim's iter_smooth reduces the consumer weight of ``ov``, ``up-down`` and
    ``linear-linear`` subgraphs to (``IterSmoothScaleCalculator.compute_smooth_scale`` is handed the
    raw weight there, ``processor/anti_outlier/iter_smooth/api.py``; ``docs/algorithms.md``)."""
    columns = torch.stack([w.detach().amax(dim=0).float() for w in weights]).amax(dim=0)
    return columns.clamp(min=WEIGHT_FLOOR)


# --- scales -----------------------------------------------------------------------------------

def smoothing_scales(act: torch.Tensor, weight: torch.Tensor, alpha: float, beta: float,
                     floor: float) -> torch.Tensor:
    """``act^alpha / weight^beta``, at least ``floor`` (float32)."""
    return (act.float().pow(alpha) / weight.float().pow(beta)).clamp(min=floor)


def _groups(values: torch.Tensor, heads: AttentionHeads) -> torch.Tensor:
    """``[num_heads * head_dim]`` viewed as ``[num_kv_heads, heads per kv head, head_dim]``."""
    ratio = heads.num_heads // heads.num_kv_heads
    return values.reshape(heads.num_kv_heads, ratio, heads.head_dim)


def _expand(per_kv: torch.Tensor, heads: AttentionHeads) -> tuple[torch.Tensor, torch.Tensor]:
    """(o scales ``[num_heads * head_dim]``, source row scales ``[num_kv_heads * (rows_before + head_dim)]``)
    from ``[kv, head_dim]``."""
    ratio = heads.num_heads // heads.num_kv_heads
    o_scales = per_kv.unsqueeze(1).expand(heads.num_kv_heads, ratio, heads.head_dim).reshape(-1)
    if heads.rows_before:  # MLA: each head's key rows come first in the source and keep scale 1
        per_kv = torch.cat([torch.ones(heads.num_kv_heads, heads.rows_before, dtype=per_kv.dtype,
                                       device=per_kv.device), per_kv], dim=1)
    return o_scales.contiguous(), per_kv.reshape(-1).contiguous()


def ov_scales_mean(scales: torch.Tensor, heads: AttentionHeads) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scales of ``o_proj``'s input made consistent with grouped-query attention: every
    query head reading one value head gets their mean (iter_smooth's reduction)."""
    return _expand(_groups(scales, heads).mean(dim=1), heads)


def ov_scales_max(act: torch.Tensor, weight: torch.Tensor, alpha: float, beta: float,
                  heads: AttentionHeads, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same from the maxima over the query heads of each group (flex_smooth_quant's reduction)."""
    act_kv = _groups(act.float(), heads).amax(dim=1)
    weight_kv = _groups(weight.float(), heads).amax(dim=1)
    return _expand(smoothing_scales(act_kv, weight_kv, alpha, beta, floor), heads)


# --- folds (float32 math, rounded once to the tensor's dtype) ------------------------------------

def scale_columns(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``W diag(s)``: a consumer's input channels multiplied by the scales."""
    columns = scale.float()
    return map_row_blocks(weight, weight.dtype, lambda block, _rows: block.mul_(columns))


def divide_rows(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``diag(1/s) W``: a producer's output channels divided by the scales."""
    rows_scale = scale.float().unsqueeze(1)
    return map_row_blocks(weight, weight.dtype, lambda block, rows: block.div_(rows_scale[rows]))


def divide_vector(vector: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A producer's bias divided by the scales."""
    return (vector.float() / scale.float()).to(vector.dtype)


def shifted_bias(weight: torch.Tensor, bias: torch.Tensor | None, shift: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    """``b + W z``: what a consumer adds back for an input shifted by ``-z`` (``W`` before scaling)."""
    added = weight.float() @ shift.float()
    return (added if bias is None else bias.float() + added).to(dtype)


def shifted_norm_bias(bias: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor,
                      dtype: torch.dtype) -> torch.Tensor:
    """``(b - z) / s``: the bias of a norm whose output is shifted by ``-z`` and divided by ``s``."""
    base = -shift.float() if bias is None else bias.float() - shift.float()
    return (base / scale.float()).to(dtype)


# --- flex_smooth_quant's search -----------------------------------------------------------------

@dataclass(frozen=True)
class SearchScheme:
    """How the subgraph's consumers will be quantized: the search scores the error of exactly that.
    The default is msModelSlim's search scheme (int8 per token, symmetric; int8 weights per channel)."""

    act: Literal["per_token", "per_tensor", "none"] = "per_token"
    act_symmetric: bool = True
    weight_bits: int = 8
    weight_symmetric: bool = True
    group_size: int | None = None


def _row_absmax(x: torch.Tensor) -> torch.Tensor:
    """``max |x|`` per row, as ``[rows, 1]`` (two reductions, no ``abs`` copy of ``x``)."""
    return torch.maximum(x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True).neg_())


class SearchProblem:
    """One subgraph's search data: activations ``x`` ``[T, d]`` (a bounded subset of tokens), the
    rows ``w_rows`` ``[R, d]`` of its consumers' weights that the error is measured on, the range
    of the activations over every calibration token (``stats``) and the consumers' per-column
    weight maxima over all rows (``weight``).

    ``error(alpha, beta)``: the relative output error ``||Q(x/s) Q(W s)^T - x W^T||^2 / ||x W^T||^2``
    of the subgraph quantized as ``scheme`` says (a static per-tensor range is the one the smoothed
    activations will have over all tokens: ``stats`` mapped by ``s``). Both sides are kept as
    integers and their steps applied to the small ``[T, R]`` product, which costs a few passes over
    each side per candidate. Deterministic: the same inputs give the same bits on any rank.
    """

    def __init__(self, x: torch.Tensor, w_rows: torch.Tensor, stats: ActivationStats, weight: torch.Tensor,
                 scheme: SearchScheme = SearchScheme()) -> None:
        self.x = x.float()
        self.w_rows = w_rows.float()
        self.stats = stats
        self.act = act_absmax(stats)
        self.weight = weight.float()
        self.scheme = scheme
        self.golden = self.x @ self.w_rows.T
        self.norm = float(self.golden.double().square().sum())

    def _activations(self, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(integers, or the smoothed activations when unquantized; their step per token or tensor)."""
        x = self.x / scale
        if self.scheme.act == "per_token":
            step = _row_absmax(x).div_(QMAX).clamp_(min=torch.finfo(torch.float32).tiny)
            return x.div_(step).round_(), step   # |x / step| <= 127: no clamp needed
        if self.scheme.act == "per_tensor":
            smoothed = mapped_stats(self.stats, scale)
            step, offset = scale_offset(smoothed.minimum.amin().reshape(1), smoothed.maximum.amax().reshape(1), 8,
                                        self.scheme.act_symmetric)
            qmin, qmax = int_range(8)
            centred = x.div_(step).round_().clamp_(qmin - float(offset), qmax - float(offset))
            return centred, step.reshape(1, 1)   # (q - offset) * step
        return x, torch.ones(1, 1)

    def _weights(self, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(integers or dequantized rows, their step per row as ``[1, R]``)."""
        scheme = self.scheme
        w = self.w_rows * scale
        if scheme.weight_symmetric and not scheme.group_size:
            step, _ = scale_offset(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), scheme.weight_bits, True)
            qmin, qmax = int_range(scheme.weight_bits)
            return w.div_(step).round_().clamp_(qmin, qmax), step.T
        scope = "per_group" if scheme.group_size else "per_channel"
        q, step, offset = quantize_weight(w, scope, scheme.weight_bits, scheme.weight_symmetric, scheme.group_size)
        return dequantize_weight(q, step, offset), torch.ones(1, 1)

    def error(self, alpha: float, beta: float) -> float:
        return self.error_of(smoothing_scales(self.act, self.weight, alpha, beta, WEIGHT_FLOOR))

    def error_of(self, scale: torch.Tensor) -> float:
        """The relative output error with the per-channel smoothing ``scale`` (float32 ``[d]``)."""
        err = self.squared_error_of(scale)
        return err / self.norm if self.norm > 0 else err

    def squared_error_of(self, scale: torch.Tensor) -> float:
        """``||Q(x/s) Q(W s)^T - x W^T||^2`` (float64 sum) with the smoothing ``scale``: the numerator
        of ``error_of``, which sums over tokens (``self.norm`` is the denominator's)."""
        acts, act_step = self._activations(scale)
        weights, weight_step = self._weights(scale)
        out = (acts @ weights.T).mul_(act_step).mul_(weight_step)
        return float(out.sub_(self.golden).double().square().sum())


def grid_choice(errors: Sequence[float], start: int = 0) -> int:
    """The grid index to keep: scanning upward from a running best that starts at ``start``, every
    index whose error is at most the best so far replaces it (ties go to the later grid value).
    Phase 1 starts at 0; phase 2 starts at beta = 1 - alpha, the candidate phase 1 chose."""
    best = start
    for index, value in enumerate(errors):
        if value <= errors[best]:
            best = index
    return best
