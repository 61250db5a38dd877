"""Problems found by the compatibility check: a field path, a message that says what to do, a severity."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else "warning: "
        return f"{self.path}: {prefix}{self.message}"


def has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def join_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    """``spec.config`` + ('spec', 'process', 1, 'type') -> ``spec.config.spec.process[1].type``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path



# Error type of ``field_error``: a validator that names a field deeper than where it runs.
FIELD_ERROR = "quantjob_field"


def field_error(path: str, message: str) -> PydanticCustomError:
    """An error for a validator to raise about ``path`` (relative to the validated object)."""
    return PydanticCustomError(FIELD_ERROR, "{path}: {message}", {"path": path, "message": message})


def from_validation_error(error: ValidationError, prefix: str = "") -> list[Problem]:
    """One Problem per pydantic error, with the full field path."""
    from quantjob.api.processor_registry import tags

    union_tags = tags()  # the Processor union adds its tag to the location; keep the path readable
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        loc = tuple(p for p in item["loc"] if p not in union_tags)
        message = str(item["msg"]).removeprefix("Value error, ")
        context = item.get("ctx") or {}
        if item["type"] == FIELD_ERROR:
            loc = (*loc, *split_path(str(context["path"])))
            message = str(context["message"])
        elif item["type"] == "extra_forbidden":
            message = f"unknown field {loc[-1]!r}; remove it or check its spelling"
        elif item["type"] == "missing":
            message = "required field is missing"
        problems.append(Problem(join_path(prefix, loc), message))
    return problems


def split_path(path: str) -> tuple[int | str, ...]:
    """``process[1].type`` -> ('process', 1, 'type')."""
    parts: list[int | str] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):  # names may be map keys: 1BAD, a/b
        parts.append(int(index) if index else name)
    return tuple(parts)
