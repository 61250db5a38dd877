"""The family registry: one ``Family`` per config.json ``model_type``, registered explicitly by
``quantjob.families`` (nothing is found by its name), and the tables read from it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantjob.families.family import Family, LayerLayout
from quantjob.families.shared import DENSE_LAYOUT

_FAMILIES: dict[str, Family] = {}


@dataclass(frozen=True)
class NameEntry:
    """One line of the ``--model_type`` name table: names starting with ``prefix`` (and, with a
    ``pattern``, containing a match of it) name ``model_type`` (None: another architecture, refused)."""

    prefix: str
    pattern: str | None
    model_type: str | None


def _entries(family: Family) -> list[NameEntry]:
    own = family.model_type
    return ([NameEntry(prefix, None, own) for prefix in dict.fromkeys((own, *family.names))]
            + [NameEntry(rule.prefix, rule.pattern, own) for rule in family.name_rules]
            + [NameEntry(prefix, None, None) for prefix in family.other_architectures])


def register(family: Family) -> Family:
    """Add ``family``; refused when its model type, a wrapper of it or one of its names is taken."""
    taken = {(entry.prefix, entry.pattern): entry.model_type for entry in name_table()}
    wrappers = {wrapper for known in _FAMILIES.values() for wrapper in known.wrappers}
    if family.model_type in _FAMILIES or family.model_type in wrappers:
        raise ValueError(f"model family {family.model_type!r} is already registered")
    for entry in _entries(family):
        if (entry.prefix, entry.pattern) in taken:
            raise ValueError(f"model family {family.model_type!r}: the name {entry.prefix!r} already resolves "
                             f"to {taken[(entry.prefix, entry.pattern)]!r}")
    if any(wrapper in _FAMILIES or wrapper in wrappers for wrapper in family.wrappers):
        raise ValueError(f"model family {family.model_type!r}: a wrapper model type is already registered")
    _FAMILIES[family.model_type] = family
    return family


def unregister(model_type: str) -> None:
    """Take a registration back (tests that register a fake family)."""
    del _FAMILIES[model_type]


def families() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())


def model_types() -> tuple[str, ...]:
    """config.json model types with a family, sorted."""
    return tuple(sorted(_FAMILIES))


def registered(model_type: object) -> Family | None:
    """The family of config.json's ``model_type``, or None."""
    return _FAMILIES.get(model_type) if isinstance(model_type, str) else None


def family_named(model_type: str) -> Family:
    found = _FAMILIES.get(model_type)
    if found is None:
        raise KeyError(f"model family {model_type!r} is not registered; registered: {', '.join(model_types())}")
    return found


def wrapped_text_model(model_type: object) -> str | None:
    """For a multimodal wrapper's model type (``gemma3``), the model type of the language model it
    holds (``gemma3_text``); else None."""
    return next((family.model_type for family in _FAMILIES.values() if model_type in family.wrappers), None)


def name_table() -> list[NameEntry]:
    """Every family's names, longest prefix first (a patterned entry before a plain one of the same
    prefix length, then registration order): the first entry that matches a name decides it."""
    entries = [entry for family in _FAMILIES.values() for entry in _entries(family)]
    return sorted(entries, key=lambda entry: (-len(entry.prefix), entry.pattern is None))


def family_for_name(name: str) -> str | None:
    """The model type an msModelSlim-style ``--model_type`` (``Qwen2.5-7B``, ``Qwen3-30B-A3B``)
    names, or None when no family claims it (or it names another architecture)."""
    lowered = name.strip().lower()
    return next((entry.model_type for entry in name_table() if lowered.startswith(entry.prefix)
                 and (entry.pattern is None or re.search(entry.pattern, lowered))), None)


def layout_of(model_type: object) -> LayerLayout:
    """The fused linears of a model type's decoder layers; an unknown one (refused elsewhere) is
    judged as a dense Llama-style layer."""
    family = registered(model_type)
    return family.layout if family is not None else DENSE_LAYOUT
