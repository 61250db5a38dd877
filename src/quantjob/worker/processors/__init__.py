"""Processors registered by name: plain functions over one materialised layer and the reduced
statistics (``LayerContext``). Adding an algorithm means one module and one entry here; the loop in
``quantjob.worker.runner`` does not change. ``tests/worker/test_catalogue_implemented.py`` checks that
every catalogue entry marked implemented has its entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quantjob.worker.processors.context import LayerContext
from quantjob.worker.processors.flex_smooth import apply_flex_smooth, check_flex_smooth
from quantjob.worker.processors.iter_smooth import apply_iter_smooth, check_iter_smooth
from quantjob.worker.processors.linear_quant import (
    apply_group,
    apply_linear_quant,
    check_shapes,
    static_activations,
)
from quantjob.worker.processors.preflight import Preflight


@dataclass(frozen=True)
class ProcessorEntry:
    """``apply(config_entry, ctx)`` does the work. ``needs_stats(config_entry)``: it reads
    ``ctx.stats``, which the loop refreshes when an earlier processor changed the float weights.
    ``check(config_entry, path, Preflight)`` finds problems before any compute.
    ``reobserves``: it may observe the layer's inputs again (``ctx.reobserve``, or leaving
    ``ctx.modified`` set for a later processor that reads statistics), so the loop keeps every layer
    input until the processors are done. The smoothing processors change weights but keep
    ``ctx.stats`` current themselves (each fold maps its consumers' statistics), so they need no
    second pass and the loop drops inputs as soon as their outputs exist.
    ``uses_probes``: it reads ``ctx.probes``, so the loop records them in its observation pass."""

    apply: Callable[[Any, LayerContext], None]
    needs_stats: Callable[[Any], bool]
    check: Callable[[Any, str, Preflight], list[str]]
    reobserves: bool = False
    uses_probes: bool = False


def _always(_entry: Any) -> bool:
    return True


PROCESSORS: dict[str, ProcessorEntry] = {
    "linear_quant": ProcessorEntry(apply_linear_quant, static_activations, check_shapes),
    "group": ProcessorEntry(apply_group, static_activations, check_shapes),
    "iter_smooth": ProcessorEntry(apply_iter_smooth, _always, check_iter_smooth),
    "flex_smooth_quant": ProcessorEntry(apply_flex_smooth, _always, check_flex_smooth, uses_probes=True),
}


def processor_for(name: str) -> ProcessorEntry:
    from quantjob.api.catalogue import canonical_name

    entry = PROCESSORS.get(canonical_name("processor", name))
    if entry is None:
        raise ValueError(f"processor {name!r} is not implemented in the worker; supported: {', '.join(PROCESSORS)}")
    return entry


__all__ = ["PROCESSORS", "LayerContext", "Preflight", "ProcessorEntry", "processor_for"]
