"""The output format registry: one ``OutputFormatEntry`` per format, registered explicitly.

A format is one package ``quantjob.formats.<name>``: its ``__init__`` (torch-free) holds the entry
and the format's constants, ``rules.py`` the load rules the compatibility check applies to a saver
writing it (torch-free, read by ``quantjob.api.rules_output``), ``writer.py`` the worker's
``OutputFormat`` (``quantjob.worker.savers.formats``) and the reader the entry names (``quantjob
perplexity``). ``quantjob.formats`` lists the packages by hand; nothing is found by its name. A saver's
catalogue entry names the format it writes (``quantjob.api.catalogue.Algorithm.format``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantjob.api.modelslim import LinearQuant, ModelslimConfig
    from quantjob.api.problems import Problem

LoadRules = Callable[["ModelslimConfig", "list[tuple[str, LinearQuant]]", str, "dict[str, Any] | None", str],
                     "list[Problem]"]


@dataclass(frozen=True)
class OutputFormatEntry:
    """One output format.

    ``load_problems(config, entries, saver_at, model_config, prefix)``: what would make an output of
    this format fail to load (or load wrong), for the saver at ``saver_at``. ``exact_fused``: its
    loaders need the shards of a fused linear to share the exact scheme (not only its type).
    ``writer()``: the worker's ``OutputFormat`` (imports torch and the format's library).
    ``recognises(model_dir, read_config)``: a model directory holds an output of this format
    (``read_config()`` reads its config.json). ``reader(model_dir)``: that output, readable layer by
    layer (``quantjob.worker.readers.perplexity.SavedModel``); ``kind``: the name ``quantjob perplexity``
    reports for it; ``reads_what``: how its refusal message names what it reads.
    ``moe_expert_problem(lq, path, expert_linear, prefix)``: (field, message) when its engines have no
    MoE scheme for what ``lq`` gives a routed expert; ``moe_warning``: said of every MoE model it saves.
    """

    name: str
    load_problems: LoadRules
    writer: Callable[[], Any]
    recognises: Callable[[Path, Callable[[], dict[str, Any]]], bool]
    reader: Callable[[Path], Any]
    kind: str
    reads_what: str
    exact_fused: bool = False
    moe_expert_problem: Callable[[LinearQuant, str, str, str], tuple[str, str] | None] | None = None
    moe_warning: str | None = None


_FORMATS: dict[str, OutputFormatEntry] = {}


def register(entry: OutputFormatEntry) -> OutputFormatEntry:
    if entry.name in _FORMATS:
        raise ValueError(f"output format {entry.name!r} is already registered")
    _FORMATS[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Take a registration back (tests that register a fake format)."""
    del _FORMATS[name]


def format_named(name: str) -> OutputFormatEntry:
    found = _FORMATS.get(name)
    if found is None:
        raise KeyError(f"output format {name!r} is not registered; registered: {', '.join(_FORMATS)}")
    return found


def formats() -> list[OutputFormatEntry]:
    """Every registered format, in registration order (the order readers are tried in)."""
    return list(_FORMATS.values())
