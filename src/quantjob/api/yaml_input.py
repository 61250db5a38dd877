"""Reading YAML a user hands in (``quantjob validate``, ``--config_path``) with bounded work.

A QuantJob or a modelslim_v1 config is a few kilobytes, a few levels deep. Before anything is
built, the text is refused when it is larger than ``MAX_BYTES``, and its event stream (parsed
without recursion) is refused when collections nest deeper than ``MAX_DEPTH`` (building deep
documents recurses) or when the document stands for more than ``MAX_NODES`` values once its
aliases are expanded (a few lines of anchors can stand for billions). Only then are the
documents built, with libyaml when it is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

# 3 MiB, the API server's limit on a request body: a QuantJob the cluster would read is read here,
# and refused by the same object-size rule as in the webhook (operator.review); configs are KBs
MAX_BYTES = 3 << 20
MAX_DEPTH = 64
MAX_NODES = 20_000

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlProblem:
    """Why the text was not loaded; ``line`` is 1-based, None when it concerns the whole text."""

    message: str
    line: int | None = None


def too_large(size: int) -> YamlProblem | None:
    if size > MAX_BYTES:
        return YamlProblem(f"larger than the {MAX_BYTES} bytes accepted (a QuantJob or a modelslim_v1 "
                           "config is a few kilobytes); is this the right file?")
    return None


def _line(event: Any) -> int | None:
    mark = getattr(event, "start_mark", None)
    return mark.line + 1 if mark is not None else None


def _scan(text: str) -> YamlProblem | None:
    """Depth and expanded size from the event stream, without building anything."""
    sizes: dict[str, int] = {}          # anchor -> values it stands for
    open_nodes: list[list[Any]] = []    # [anchor, values so far] per open collection
    seen = 0                            # values of the current document so far, aliases expanded

    for event in yaml.parse(text, Loader=_LOADER):
        count = 0
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(open_nodes) >= MAX_DEPTH:
                return YamlProblem(f"collections nest more than {MAX_DEPTH} deep; a QuantJob or a config nests "
                                   "a few levels", _line(event))
            open_nodes.append([event.anchor, 1])
            seen += 1
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, size = open_nodes.pop()
            if anchor:
                sizes[anchor] = size
            if open_nodes:
                open_nodes[-1][1] += size
        elif isinstance(event, yaml.ScalarEvent):
            count = 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            count = sizes.get(event.anchor or "", 1)
        elif isinstance(event, yaml.DocumentEndEvent):
            seen, sizes = 0, {}
        if count:
            seen += count
            if open_nodes:
                open_nodes[-1][1] += count
        if seen > MAX_NODES:
            return YamlProblem(f"the document stands for more than {MAX_NODES} values once its aliases are "
                               "expanded; a QuantJob or a config holds a few hundred", _line(event))
    return None


def load_documents(text: str) -> list[Any] | YamlProblem:
    """The non-empty documents of ``text``, or why they cannot be read (a syntax error or a limit)."""
    try:
        problem = too_large(len(text.encode("utf-8", "surrogatepass"))) or _scan(text)
        if problem is not None:
            return problem
        return [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        reason = getattr(error, "problem", None) or str(error)
        return YamlProblem(f"invalid YAML: {reason}", mark.line + 1 if mark is not None else None)
