"""Processor implementations keyed by config class: plain functions over one materialised layer and the
reduced statistics (``LayerContext``). A processor is its config class, registered once in
``quantjob.api.modelslim`` (``@processor``: type name, catalogue entry, union member, statistics), plus
its module here and one ``HANDLERS`` entry keyed by that class; the loop in ``quantjob.worker.loop.runner``
does not change. ``tests/worker/test_catalogue_implemented.py`` checks that every registered config
class has its entry here and nothing else does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from quantjob.api.modelslim import FlexSmoothQuant, Group, IterSmooth, LinearQuant
from quantjob.api.processor_registry import registration, registrations
from quantjob.worker.processors.context import LayerContext, Preflight
from quantjob.worker.processors.flex_smooth import apply_flex_smooth, check_flex_smooth
from quantjob.worker.processors.iter_smooth import apply_iter_smooth, check_iter_smooth
from quantjob.worker.processors.linear_quant import (
    apply_group,
    apply_linear_quant,
    check_shapes,
    static_activations,
)


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
    The statistics it reads (``ctx.stats``, ``ctx.probes``) are declared by its registration
    (``quantjob.api.processor_registry``), and the loop gathers what the run's processors ask for."""

    apply: Callable[[Any, LayerContext], None]
    needs_stats: Callable[[Any], bool]
    check: Callable[[Any, str, Preflight], list[str]]
    reobserves: bool = False


def _always(_entry: Any) -> bool:
    return True


HANDLERS: dict[type[BaseModel], ProcessorEntry] = {
    LinearQuant: ProcessorEntry(apply_linear_quant, static_activations, check_shapes),
    Group: ProcessorEntry(apply_group, static_activations, check_shapes),
    IterSmooth: ProcessorEntry(apply_iter_smooth, _always, check_iter_smooth),
    FlexSmoothQuant: ProcessorEntry(apply_flex_smooth, _always, check_flex_smooth),
}


def implemented_names() -> list[str]:
    """The canonical type names of the processors the worker implements (``HANDLERS`` by name, for
    messages and checks; the names come from the registrations)."""
    return [r.tag for r in registrations() if r.config in HANDLERS]


def processor_for(name: str) -> ProcessorEntry:
    """The implementation of the processor named ``name`` (a type name or alias)."""
    found = registration(name)
    entry = HANDLERS.get(found.config) if found is not None else None
    if entry is None:
        raise ValueError(f"processor {name!r} is not implemented in the worker; "
                         f"supported: {', '.join(implemented_names())}")
    return entry


__all__ = ["HANDLERS", "LayerContext", "Preflight", "ProcessorEntry", "implemented_names", "processor_for"]
