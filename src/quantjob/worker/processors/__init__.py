"""Processors registered by name: plain functions over one materialised layer and the reduced
statistics (``LayerContext``). Adding an algorithm (iter_smooth, flex_smooth_quant, ...) means
adding an entry here; the loop in ``quantjob.worker.runner`` does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quantjob.worker.processors.context import LayerContext
from quantjob.worker.processors.linear_quant import apply_group, apply_linear_quant, check_shapes, static_activations


@dataclass(frozen=True)
class ProcessorEntry:
    """``apply(config_entry, ctx)`` does the work. ``needs_stats(config_entry)``: it reads
    ``ctx.stats``, which the loop refreshes when an earlier processor changed the float weights.
    ``check(config_entry, path, {linear: weight shape})`` finds problems before any compute.
    ``modifies_weights``: it may change the float weights (and set ``ctx.modified``), so the loop
    keeps every layer input until the processors are done, to observe them again."""

    apply: Callable[[Any, LayerContext], None]
    needs_stats: Callable[[Any], bool]
    check: Callable[[Any, str, dict[str, tuple[int, ...]]], list[str]]
    modifies_weights: bool = False


PROCESSORS: dict[str, ProcessorEntry] = {
    "linear_quant": ProcessorEntry(apply_linear_quant, static_activations, check_shapes),
    "group": ProcessorEntry(apply_group, static_activations, check_shapes),
}


def processor_for(name: str) -> ProcessorEntry:
    from quantjob.api.catalogue import canonical_name

    entry = PROCESSORS.get(canonical_name("processor", name))
    if entry is None:
        raise ValueError(f"processor {name!r} is not implemented in the worker; supported: {', '.join(PROCESSORS)}")
    return entry


__all__ = ["PROCESSORS", "LayerContext", "ProcessorEntry", "processor_for"]
