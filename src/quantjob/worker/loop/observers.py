"""Observers: statistics of the activations entering each linear, and the methods that turn
reduced statistics into quantization parameters.

Statistics are per input channel (min and max over every observed token), so smoothing
processors can use the per-channel ranges and per-tensor quantization reduces them further.
Reduction across ranks is one ``all_min`` per layer (maxima negated): exact, the same bits for any
world size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from quantjob.api.modelslim import QuantSpec
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.quantizers import quantize_weight, scale_offset
from quantjob.worker.loop.ssz import ssz_weight


@dataclass
class ActivationStats:
    """Per-input-channel running min and max (float32 ``[in_features]``) and the token count seen."""

    minimum: torch.Tensor
    maximum: torch.Tensor

    @classmethod
    def empty(cls, channels: int, device: torch.device) -> ActivationStats:
        return cls(torch.full((channels,), float("inf"), device=device),
                   torch.full((channels,), float("-inf"), device=device))

    def update(self, x: torch.Tensor) -> None:
        self.add_range(channel_range(x))

    def add_range(self, found: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Widen the running range by a ``channel_range`` result (None: no tokens)."""
        if found is None:
            return
        lo, hi = found
        torch.minimum(self.minimum, lo.float(), out=self.minimum)
        torch.maximum(self.maximum, hi.float(), out=self.maximum)

    @property
    def observed(self) -> bool:
        return bool(torch.isfinite(self.minimum).all())


def channel_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel (last dim) min and max over every token of ``x``; None when it has no tokens."""
    flat = x.detach().reshape(-1, x.shape[-1])
    if flat.shape[0] == 0:
        return None
    # in the input dtype (min/max are exact, no float copy); amin and amax apart, because
    # torch.aminmax along dim 0 is about 7x slower on CPU than the two reductions
    return flat.amin(dim=0), flat.amax(dim=0)


@contextmanager
def observe_inputs(modules: Mapping[str, torch.nn.Linear]) -> Iterator[dict[str, ActivationStats]]:
    """Record the input range of each module while the block runs; hooks removed on exit.

    Linears fed the very same tensor (q/k/v after the input norm, gate/up after the post-attention
    norm) share one reduction: the hook remembers the last input it reduced (holding a reference,
    so identity cannot be reused by another tensor).
    """
    stats: dict[str, ActivationStats] = {}
    handles = []
    last: list[Any] = [None, None]  # [input tensor, its channel_range]

    def observed_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if last[0] is not x:
            last[0], last[1] = x, channel_range(x)
        found: tuple[torch.Tensor, torch.Tensor] | None = last[1]
        return found

    for name, module in modules.items():
        weight = module.weight
        stats[name] = ActivationStats.empty(weight.shape[1], weight.device)

        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], _name: str = name) -> None:
            stats[_name].add_range(observed_range(args[0]))

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
        last.clear()


# --- probes: a bounded, rank-independent subset of the activations ----------------------------------

# tokens per layer kept for searches (flex_smooth_quant), over all samples, besides each sample's
# token 0. Issue 23's rule (docs/algorithms.md): the smallest budget of the measured table whose
# worst excess error over every token's pair is at most 0.25% on both the anchor shape and
# Gemma3-270M. 256 fails it (Gemma3: 12 of 20 sites, worst +2.10%); 1024 passes (anchor +0.22%,
# Gemma3 18 of 20, worst +0.25%); 4096 (20 of 20) costs about 4.6x the search for +0.01%.
PROBE_TOKENS = 1024


def evenly_spaced(count: int, size: int) -> torch.Tensor:
    """``min(count, size)`` indices spread over ``range(size)``: the middle of equal bins."""
    k = min(count, size)
    return ((torch.arange(k, dtype=torch.float64) + 0.5) * size / k).floor().long()


def probe_positions(count: int, length: int) -> torch.Tensor:
    """The token positions probed in a sample of ``length`` tokens: ``evenly_spaced(count, length)``
    and always position 0, the first token (often an attention sink with the largest activations,
    which the bin middles would skip whenever ``length > 2 * count``)."""
    spread = evenly_spaced(count, length)
    if length == 0 or (spread.numel() and int(spread[0]) == 0):
        return spread
    return torch.cat([torch.zeros(1, dtype=spread.dtype), spread])


def probes_per_sample(num_samples: int, budget: int = PROBE_TOKENS) -> int:
    """Tokens probed in each calibration sample so that all samples together give about ``budget``."""
    return max(1, math.ceil(budget / max(1, num_samples)))


Probes = dict[str, dict[int, torch.Tensor]]  # linear name -> global sample index -> rows [k, d]


@contextmanager
def record_probes(modules: Mapping[str, torch.nn.Linear], samples: Sequence[int],
                  per_sample: int | None, *, block: torch.nn.Module | None = None) -> Iterator[Probes]:
    """Keep the input rows of each module at ``probe_positions(per_sample, length)`` (token 0 of each
    sample and ``per_sample`` evenly spaced ones); ``per_sample`` None keeps every row.

    The k-th forward through the block belongs to global sample ``samples[k]`` (the loop runs its
    samples one at a time, in that order), so the choice depends on the sample and its length
    only, never on the rank that holds it. Linears fed the same tensor share one copy.

    ``block``: the decoder layer; its forwards are counted instead of each module's calls, so a
    module that a sample may skip (a routed expert no token of it reaches) keeps the right sample
    index. A module called twice in one sample keeps the rows of its last call.
    """
    probes: Probes = {name: {} for name in modules}
    calls = dict.fromkeys(modules, 0)
    current = [-1]  # the block's forward under way (block given)
    handles = []
    if block is not None:
        def block_hook(_module: torch.nn.Module, _args: Any) -> None:
            current[0] += 1
            if current[0] >= len(samples):
                raise RuntimeError(f"more forward calls than the {len(samples)} samples being probed")

        handles.append(block.register_forward_pre_hook(block_hook))
    last: list[Any] = [None, None]  # [input tensor, its rows]

    def rows_of(x: torch.Tensor) -> torch.Tensor:
        if last[0] is not x:
            flat = x.detach().reshape(-1, x.shape[-1])
            kept = flat if per_sample is None else flat[probe_positions(per_sample, flat.shape[0]).to(flat.device)]
            last[0], last[1] = x, kept.clone()
        rows: torch.Tensor = last[1]
        return rows

    for name, module in modules.items():
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], _name: str = name) -> None:
            index = calls[_name] if block is None else current[0]
            if index >= len(samples):
                raise RuntimeError(f"{_name}: more forward calls than the {len(samples)} samples being probed")
            probes[_name][samples[index]] = rows_of(args[0])
            calls[_name] = index + 1

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield probes
    finally:
        for handle in handles:
            handle.remove()
        last.clear()


def reduce_stats(stats: dict[str, ActivationStats], group: ProcessGroup) -> dict[str, ActivationStats]:
    """Every rank's statistics combined (exact min/max), in a fixed name order on every rank.

    One collective per layer: the minima and the negated maxima travel in one ``all_min``
    (negation is exact, so ``-min(-a, -b)`` is ``max(a, b)`` bit for bit).
    """
    names = sorted(stats)
    if not names:
        return {}
    packed = torch.cat([stats[name].minimum for name in names] + [-stats[name].maximum for name in names])
    reduced = group.all_min(packed)
    sizes = [stats[name].minimum.numel() for name in names]
    minima = reduced[:sum(sizes)].split(sizes)
    maxima = (-reduced[sum(sizes):]).split(sizes)
    return {name: ActivationStats(lo, hi) for name, lo, hi in zip(names, minima, maxima, strict=True)}


# --- methods: reduced statistics -> quantization parameters ---------------------------------------

ActMethod = Callable[[ActivationStats, int, bool, "torch.dtype | None"], tuple[torch.Tensor, torch.Tensor]]
# (weight [out, in], its qconfig side) -> (int8 weight, float32 scale, float32 offset)
WeightMethod = Callable[[torch.Tensor, QuantSpec], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def minmax_activation(stats: ActivationStats, bits: int, symmetric: bool,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor static activation scale and offset (float32 ``[1]``) from the observed range;
    the scale is representable in ``dtype`` (the model dtype ``input_scale`` is saved in)."""
    if not stats.observed:
        raise ValueError("no activations were observed for this linear (no calibration tokens reached it)")
    return scale_offset(stats.minimum.amin().reshape(1), stats.maximum.amax().reshape(1), bits, symmetric, dtype)


def minmax_weight(weight: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    group_size = spec.group_size if spec.scope == "per_group" else None
    return quantize_weight(weight, spec.scope, spec.bits, spec.symmetric, group_size)


def ssz_weight_method(weight: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return ssz_weight(weight, spec.scope, spec.bits, spec.symmetric, steps=spec.steps)


ACTIVATION_METHODS: dict[str, ActMethod] = {"minmax": minmax_activation}
WEIGHT_METHODS: dict[str, WeightMethod] = {"minmax": minmax_weight, "ssz": ssz_weight_method}
