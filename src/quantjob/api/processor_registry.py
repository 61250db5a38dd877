"""Processor registrations: one per processor, keyed by its config class.

A processor is registered once, where its config class is defined, with ``@processor(...)``
(``quantjob.api.modelslim``). From that one registration come its type name and aliases (the
``type`` field's ``Literal``), its catalogue entry (``quantjob.api.catalogue``), its place in the pydantic ``Processor`` union
(``processor_union``), whether the smoothing rules apply to it and the statistics the worker's
layer loop gathers for it. The options an entry accepts are the class's other fields (a strict
model: pydantic refuses any other key, with its path). The worker keys its implementation by the same config class
(``quantjob.worker.processors.HANDLERS``); ``tests/worker/test_catalogue_implemented.py`` checks
both sides have the same classes. torch-free: ``quantjob.api`` never imports the worker.

The registry keys handlers by config type as torchao's ``register_quantize_module_handler`` does
(``torchao/quantization/transform_module.py``: a dict from config class to handler).
"""

from __future__ import annotations

import functools
import operator
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, Discriminator, Tag

from quantjob.api import catalogue

# Statistics the worker's layer loop can gather over a layer's calibration inputs.
# ``minmax``: every linear's input min/max (reduced over ranks); ``probes``: a bounded,
# rank-independent subset of every linear's input rows (flex_smooth_quant's search); ``rows``: every
# input row of the rank's own samples, kept on the rank (flex_smooth_quant's ``search_tokens: all``).
# A config class whose needs depend on its options adds them with a ``statistics_needed()`` method.
# A processor needing another (a Hessian for GPTQ-like methods) adds its name here and its
# gathering to ``quantjob.worker.loop.runner._Loop.observe``.
Statistic = Literal["minmax", "probes", "rows"]
STATISTICS: tuple[Statistic, ...] = typing.get_args(Statistic)

OTHER_TAG = "other_processor"


class ProcessorConfig(Protocol):
    """What every entry of ``spec.process`` has (for a type checker; narrow with isinstance)."""

    @property
    def type(self) -> str: ...


@dataclass(frozen=True)
class Registration:
    """One registered processor. ``tag``: its canonical type name (the union's tag)."""

    config: type[BaseModel]
    algorithm: catalogue.Algorithm
    statistics: frozenset[Statistic]
    smoothing: bool

    @property
    def tag(self) -> str:
        return self.algorithm.name


_REGISTERED: dict[type[BaseModel], Registration] = {}
_BY_NAME: dict[str, Registration] = {}

ModelT = TypeVar("ModelT", bound=type[BaseModel])


def type_names(config: type[BaseModel]) -> tuple[str, ...]:
    """The names a config class's ``type: Literal[...]`` field accepts: canonical first, then aliases."""
    field = config.model_fields.get("type")
    names = typing.get_args(field.annotation) if field is not None else ()
    if not names or not all(isinstance(name, str) for name in names):
        raise TypeError(f"{config.__name__}: a processor config needs a field type: Literal['<name>', ...]")
    return tuple(names)


def processor(summary: str, *, distributed: bool = False, statistics: tuple[Statistic, ...] = ("minmax",),
              smoothing: bool = False) -> Callable[[ModelT], ModelT]:
    """Register the decorated config class as a processor (see the module docstring)."""
    unknown = sorted(set(statistics) - set(STATISTICS))
    if unknown:
        raise ValueError(f"statistics {unknown} are not gathered by the layer loop; known: {', '.join(STATISTICS)}")

    def register(config: ModelT) -> ModelT:
        model: type[BaseModel] = config
        name, *aliases = type_names(model)
        taken = [n for n in (name, *aliases) if n in _BY_NAME or catalogue.lookup("processor", n) is not None]
        if taken:
            raise ValueError(f"{config.__name__}: processor name {taken[0]!r} is already registered")
        entry = catalogue.Algorithm(name, "processor", summary, distributed=distributed, aliases=tuple(aliases))
        registration = Registration(model, entry, frozenset(statistics), smoothing)
        _REGISTERED[model] = registration
        for each in (name, *aliases):
            _BY_NAME[each] = registration
        catalogue.add_processor(entry)
        return config

    return register


def unregister(config: type[BaseModel]) -> None:
    """Take a registration back (tests that register a fake processor)."""
    registration = _REGISTERED.pop(config)
    for name in (registration.algorithm.name, *registration.algorithm.aliases):
        _BY_NAME.pop(name, None)
    catalogue.remove_processor(registration.algorithm)


def registrations() -> list[Registration]:
    """Every registration, in registration order."""
    return list(_REGISTERED.values())


def registration(config: type[BaseModel] | str) -> Registration | None:
    """The registration of a config class, or of a type name or alias; None when not registered."""
    return _BY_NAME.get(config) if isinstance(config, str) else _REGISTERED.get(config)


def smoothing_classes() -> tuple[type[Any], ...]:
    """The config classes registered with ``smoothing=True`` (the rules in ``smoothing_rules``)."""
    return tuple(r.config for r in _REGISTERED.values() if r.smoothing)


def tags() -> set[str]:
    """Every tag of the ``Processor`` union (pydantic adds them to error locations)."""
    return {r.tag for r in _REGISTERED.values()} | {OTHER_TAG}


def statistics_for(entries: list[Any]) -> frozenset[Statistic]:
    """The statistics the registered processors of ``entries`` (config objects) ask for together."""
    needed: set[Statistic] = set()
    for entry in entries:
        found = _REGISTERED.get(type(entry))
        if found is not None:
            needed |= found.statistics
        extra = getattr(entry, "statistics_needed", None)
        if callable(extra):
            needed |= set(extra())
    return frozenset(needed)


def _tag_of(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind is None:
        return None
    found = _BY_NAME.get(kind) if isinstance(kind, str) else None
    return found.tag if found is not None else OTHER_TAG


def processor_union(other: type[BaseModel]) -> Any:
    """The discriminated union of every registered config class, ``other`` parsing any other type."""
    members: list[Any] = [Annotated[r.config, Tag(r.tag)] for r in _REGISTERED.values()]
    members.append(Annotated[other, Tag(OTHER_TAG)])
    return Annotated[functools.reduce(operator.or_, members), Discriminator(
        _tag_of, custom_error_type="processor_type",
        custom_error_message="a process entry is a mapping with a 'type' (e.g. type: linear_quant)")]
