"""``ssz`` weight method: per output channel, search the scale that minimises the weight's
reconstruction error, starting from minmax (msModelSlim's ``ssz``, symmetric per-channel int8 / int4).

For one row ``w`` with integers ``q = clamp(round(w / s))``, the least-squares scale for fixed
integers is ``s* = <w, q> / <q, q>``. Alternating the two steps (integers for the scale, scale for
the integers) from the minmax scale, up to ``steps`` times, and keeping per row the scale with the
smallest mean squared error ``mean((w - q s)^2)`` is msModelSlim's algorithm; the iteration stops
early once no row improves by more than 1e-10 (absolute or relative). Every candidate scale is
first made representable in the weight's dtype (``quantizers.representable``), so the error that
picks it is the error of the saved model. The weight is the same on every rank and the arithmetic
is elementwise or per row, so every world size gets the same bits. Math: ``docs/algorithms.md``.
"""

from __future__ import annotations

import torch

from quantjob.worker.loop.quantizers import (
    float_copy,
    int_range,
    representable,
    scale_offset,
    weight_minmax,
)

CONVERGED = 1e-10          # msModelSlim's SCALE_SEARCH_CONVERGE_THRESHOLD
RELATIVE_FLOOR = 1e-4      # ... and the floor of the relative test's denominator
DEFAULT_STEPS = 50


def _integers(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    qmin, qmax = int_range(bits)
    return (w / scale).round_().clamp_(qmin, qmax)


def _row_mse(w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (q * scale).sub_(w).square_().mean(dim=1, keepdim=True)


def ssz_weight(weight: torch.Tensor, scope: str, bits: int, symmetric: bool, group_size: int | None = None,
               steps: int = DEFAULT_STEPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 weight ``[out, in]``, float32 scale ``[out, 1]``, float32 zero offset ``[out, 1]``)."""
    if scope != "per_channel" or not symmetric:
        raise ValueError(f"ssz supports symmetric per_channel weights only, got scope {scope}, "
                         f"symmetric {symmetric}")
    w = float_copy(weight)
    lo, hi = weight_minmax(w, "per_channel")
    scale, _ = scale_offset(lo, hi, bits, True, weight.dtype)
    q = _integers(w, scale, bits)
    best_scale, best_q, best_mse = scale, q, _row_mse(w, q, scale)
    for _ in range(steps):
        squares = (q * q).sum(dim=1, keepdim=True)
        fitted = (w * q).sum(dim=1, keepdim=True) / squares.clamp(min=1e-30)
        usable = (squares > 0) & torch.isfinite(fitted) & (fitted > 0)
        scale = representable(torch.where(usable, fitted, scale), weight.dtype)
        q = _integers(w, scale, bits)
        mse = _row_mse(w, q, scale)
        gain = best_mse - mse
        moving = (gain / best_mse.clamp(min=RELATIVE_FLOOR) >= CONVERGED) & (gain.abs() >= CONVERGED)
        if not bool(moving.any()):
            break
        better = mse < best_mse
        best_mse = torch.where(better, mse, best_mse)
        best_scale = torch.where(better, scale, best_scale)
        best_q = torch.where(better, q, best_q)
    return best_q.to(torch.int8), best_scale, torch.zeros_like(best_scale)
