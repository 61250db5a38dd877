"""What the smoothing processors share: which subgraphs of a layer they work on, in which order,
and applying a fold to the live modules of the layer (``quantjob.worker.loop.smoothing`` holds the math).

After a fold, the statistics (and probe rows) of the fold's consumers are mapped through the same
per-channel map ``x -> (x - z) / s`` as the activations, so the context keeps describing the layer
as it now is, without another pass over the calibration set: every other linear's input is
unchanged by the fold (the function of the subgraph is preserved), and the consumers' inputs
change exactly by that map, up to the rounding of the folded weights (``docs/algorithms.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quantjob.api.globs import matches
from quantjob.worker.loop.observers import ActivationStats
from quantjob.worker.loop.smoothing import (
    divide_rows,
    divide_vector,
    mapped_stats,
    scale_columns,
    shifted_bias,
    shifted_norm_bias,
)
from quantjob.worker.model.adapters import Adapter, Subgraph
from quantjob.worker.model.added_biases import add_bias, has_bias
from quantjob.worker.processors.context import LayerContext

# msModelSlim processes a layer's subgraphs consumers-first, so no fold changes the activations a
# later subgraph's scales are computed from: up-down, ov, linear-linear, then norm-linear.
PRIORITY = {"up-down": 1, "ov": 2, "linear-linear": 3, "norm-linear": 4}


def offered_kinds(adapter: Adapter, sites: str) -> tuple[str, ...]:
    """The subgraph kinds a smoothing entry may work on for ``adapter``'s family: msModelSlim's for
    the family (``sites: family``, ``Adapter.smoothing_kinds``) or every kind the adapter lists
    (``sites: all``, quantjob's wider set)."""
    if sites == "all":
        return tuple(dict.fromkeys(spec.kind for spec in adapter.subgraph_specs))
    return adapter.smoothing_kinds


def selected_sites(ctx: LayerContext, kinds: Sequence[str], include: Sequence[str],
                   exclude: Sequence[str], sites: str = "family") -> list[Subgraph]:
    """The layer's subgraphs of a kind the family offers (``offered_kinds``) and the entry enables,
    whose source (full module name) the patterns select, in processing order."""
    offered = offered_kinds(ctx.adapter, sites)
    chosen = [site for site in ctx.subgraphs
              if site.kind in kinds and site.kind in offered and matches(ctx.full_name(site.source), include, exclude)]
    return sorted(chosen, key=lambda site: PRIORITY[site.kind])


def consumer_stats(ctx: LayerContext, site: Subgraph) -> ActivationStats | None:
    """The reduced statistics of the subgraph's activations (read at its first consumer, as all
    consumers share one input); None when no token reached it."""
    stats = ctx.stats.get(ctx.full_name(site.targets[0]))
    return stats if stats is not None and stats.observed else None


def tensor_of(module: torch.nn.Module, name: str) -> torch.Tensor:
    """A module's parameter (``weight``, ``bias``) as a plain tensor."""
    value = getattr(module, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value.detach()


def consumer_weights(ctx: LayerContext, site: Subgraph) -> list[torch.Tensor]:
    return [tensor_of(ctx.module(target), "weight") for target in site.targets]


def _set_weight(module: torch.nn.Module, weight: torch.Tensor) -> None:
    module.weight = torch.nn.Parameter(weight, requires_grad=False)


def _map_consumers(ctx: LayerContext, site: Subgraph, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    """Statistics and probe rows of the consumers' inputs after the fold."""
    for target in site.targets:
        name = ctx.full_name(target)
        if name in ctx.stats:
            ctx.stats[name] = mapped_stats(ctx.stats[name], scale, shift)
        rows = ctx.probes.get(name)
        if rows:
            ctx.probes[name] = {g: _mapped_rows(x, scale, shift) for g, x in rows.items()}


def _mapped_rows(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    value = x.float() if shift is None else x.float() - shift.to(x.device)
    return (value / scale.to(x.device)).to(x.dtype)


def _scale_consumers(ctx: LayerContext, site: Subgraph, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    for target in site.targets:
        module = ctx.module(target)
        weight = tensor_of(module, "weight")
        if shift is not None:
            bias = tensor_of(module, "bias") if has_bias(module) else None
            add_bias(module, shifted_bias(weight, bias, shift.to(weight.device), weight.dtype))
        _set_weight(module, scale_columns(weight, scale.to(weight.device)))


def fold_norm_linear(ctx: LayerContext, site: Subgraph, scale: torch.Tensor,
                     shift: torch.Tensor | None = None) -> None:
    """Divide the norm's output by ``scale`` (after subtracting ``shift``: a norm bias) and multiply
    the consumers' input channels by it (adding ``W shift`` to their biases). The scale used for the
    consumers, the norm bias and the statistics is the one the rounded norm weight really applies."""
    norm = ctx.module(site.source)
    weight = tensor_of(norm, "weight")
    device = weight.device
    old_bias = tensor_of(norm, "bias") if has_bias(norm) else None
    folded = ctx.adapter.folded_norm_weight(weight, scale.to(device))
    # the folded weight is rounded: what it really divides by is what the consumers must multiply by
    scale = ctx.adapter.applied_norm_scale(weight, folded, scale.to(device))
    _set_weight(norm, folded)
    if shift is not None:
        add_bias(norm, shifted_norm_bias(old_bias, shift.to(device), scale.to(device), weight.dtype))
    elif old_bias is not None:
        add_bias(norm, divide_vector(old_bias, scale.to(device)))
    _scale_consumers(ctx, site, scale, shift)
    _map_consumers(ctx, site, scale, shift)


def fold_linear_pair(ctx: LayerContext, site: Subgraph, consumer_scale: torch.Tensor,
                     source_scale: torch.Tensor) -> None:
    """Divide the source linear's output channels (rows and bias) by ``source_scale`` and multiply
    the consumers' input channels by ``consumer_scale`` (the same values, repeated over the query
    heads of a key/value head for ``ov``)."""
    source = ctx.module(site.source)
    weight = tensor_of(source, "weight")
    _set_weight(source, divide_rows(weight, source_scale.to(weight.device)))
    if has_bias(source):
        add_bias(source, divide_vector(tensor_of(source, "bias"), source_scale.to(weight.device)))
    _scale_consumers(ctx, site, consumer_scale, None)
    _map_consumers(ctx, site, consumer_scale, None)
