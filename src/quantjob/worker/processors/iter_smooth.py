"""``iter_smooth``: msModelSlim's iterative smoothing, from exactly reduced statistics.

Per selected subgraph (consumers first, ``smoothing_sites.PRIORITY``): the per-channel maximum of
the activations (``max |x|``; in the asymmetric mode, ``max |x - z|`` around the channel midpoint
``z``, norm-linear only) and of the consumers' weight columns (``max |W|`` for norm-linear, the
signed ``max W`` for the other kinds, as msModelSlim) give ``s = a^alpha / w^(1-alpha)``, at least
``scale_min``, kept in float32 (``docs/algorithms.md``: where this differs from msModelSlim); the fold divides the producer by ``s``
and multiplies the consumers by it.
For ``ov`` the scales of the query heads that read one key/value head are averaged. Both maxima
and the midpoint come from the layer's min/max statistics, reduced exactly over all ranks (one
``all_min``), so every world size computes the same scales. Math: ``docs/algorithms.md``.
"""

from __future__ import annotations

from quantjob.api.globs import matches
from quantjob.api.modelslim import IterSmooth
from quantjob.worker.loop.smoothing import (
    act_absmax,
    act_midpoint,
    ov_scales_mean,
    shifted_absmax,
    smoothing_scales,
    weight_absmax,
    weight_signed_max,
)
from quantjob.worker.processors.context import LayerContext, Preflight
from quantjob.worker.processors.smoothing_sites import (
    consumer_stats,
    consumer_weights,
    fold_linear_pair,
    fold_norm_linear,
    selected_sites,
)


def apply_iter_smooth(entry: IterSmooth, ctx: LayerContext) -> None:
    alpha, beta = entry.alpha, 1.0 - entry.alpha
    for site in selected_sites(ctx, entry.enable_subgraph_type, entry.include, entry.exclude, entry.ext.sites):
        stats = consumer_stats(ctx, site)
        if stats is None:
            continue
        weights = consumer_weights(ctx, site)
        if site.kind == "norm-linear":
            shift = None if entry.symmetric else act_midpoint(stats)
            act = act_absmax(stats) if shift is None else shifted_absmax(stats, shift)
            scales = smoothing_scales(act, weight_absmax(weights), alpha, beta, entry.scale_min)
            fold_norm_linear(ctx, site, scales, shift)
            continue
        # msModelSlim's ov / up-down / linear-linear reduce the consumer weight to its signed column max
        scales = smoothing_scales(act_absmax(stats), weight_signed_max(weights), alpha, beta, entry.scale_min)
        if site.kind == "ov":
            assert site.heads is not None
            consumer, source = ov_scales_mean(scales, site.heads)
        else:
            consumer = source = scales
        fold_linear_pair(ctx, site, consumer, source)


def check_iter_smooth(entry: IterSmooth, path: str, view: Preflight) -> list[str]:
    """The asymmetric mode adds a bias to every consumer of a smoothed norm, and the norm's shift as
    ``<norm>.bias``: refused where vllm-ascend would drop either (see docs/algorithms.md)."""
    if entry.symmetric or "norm-linear" not in entry.enable_subgraph_type:
        return []
    adapter = view.adapter
    if not adapter.norm_bias:
        return [(f"{path}.symmetric: false writes each smoothed norm's shift as <norm>.bias, which "
                f"vllm-ascend's norm of {adapter.name} models does not apply; use symmetric: true")]
    dropped: list[str] = []
    prefix = adapter.layers + "."
    sites = [spec for spec in adapter.subgraph_specs if spec.kind == "norm-linear"]
    for name in sorted(view.shapes):
        layer, _, relative = name[len(prefix):].partition(".")
        for spec in sites:
            source = f"{prefix}{layer}.{spec.source}"
            if relative not in spec.targets or not matches(source, entry.include, entry.exclude):
                continue
            lq = view.config.linear_quant_for(name)
            static = lq is not None and lq.qconfig.act is not None and lq.qconfig.act.scope == "per_tensor"
            if not static and f"{name}.bias" not in view.tensor_names:
                dropped.append(name)
    if not dropped:
        return []
    more = f" and {len(dropped) - 1} more linears" if len(dropped) > 1 else ""
    return [(f"{path}.symmetric: false adds a bias to {dropped[0]}{more}, which has none in the model and is not "
            "quantized with static per_tensor activations (W8A8): vllm-ascend keeps such a bias only in W8A8's "
            "quant_bias and would drop it; use symmetric: true, or quantize those linears W8A8 static")]
