"""Module-name globs of ``include``/``exclude``: ``*``, ``?``, ``[abc]``, ``[!abc]`` and brace lists.

Matching is case-sensitive and ``*`` crosses dots (``*mlp*`` matches ``model.layers.0.mlp.up_proj``),
as in msModelSlim. A brace list ``model.layers.{0,1,2}.*`` stands for one pattern per alternative;
braces nest. Inside ``[...]`` braces are ordinary characters. ``exclude`` wins over ``include``,
and an empty ``include`` selects every name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from fnmatch import translate
from functools import lru_cache


def _bracket_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start``, or -1 when it is not closed.

    A ``]`` right after ``[`` or ``[!`` is a member of the class, as in fnmatch.
    """
    index = start + 1
    if index < len(pattern) and pattern[index] == "!":
        index += 1
    if index < len(pattern) and pattern[index] == "]":
        index += 1
    return pattern.find("]", index)


def pattern_error(pattern: str) -> str | None:
    """What is wrong with ``pattern`` (unbalanced braces or brackets, empty), or None when it is valid."""
    if not isinstance(pattern, str) or not pattern:
        return "empty pattern; use '*' to select every module"
    depth = 0
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "[":
            close = _bracket_end(pattern, index)
            if close < 0:
                return f"pattern {pattern!r}: '[' at position {index} is never closed; add ']'"
            index = close + 1
            continue
        if char == "]":
            return f"pattern {pattern!r}: ']' at position {index} has no opening '['"
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return f"pattern {pattern!r}: '}}' at position {index} has no opening '{{'"
            depth -= 1
        index += 1
    if depth:
        return f"pattern {pattern!r}: {depth} '{{' never closed; add '}}' or remove the brace"
    return None


def _tokens(text: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """(index, token) from ``start`` on: single characters, a bracket set ``[...]`` as one token
    (braces and commas inside it are literal). ``text`` is known to be valid."""
    index = start
    while index < len(text):
        if text[index] == "[":
            close = _bracket_end(text, index)
            yield index, text[index:close + 1]
            index = close + 1
        else:
            yield index, text[index]
            index += 1


def _split_top(body: str) -> list[str]:
    """Split the inside of one brace group at its top-level commas."""
    parts: list[str] = []
    depth = 0
    current = ""
    for _, token in _tokens(body):
        depth += {"{": 1, "}": -1}.get(token, 0)
        if token == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += token
    parts.append(current)
    return parts


def _brace_end(pattern: str, start: int) -> int:
    """Index of the ``}`` closing the brace opened at ``start`` (the pattern is known to be valid)."""
    depth = 0
    for index, token in _tokens(pattern, start):
        depth += {"{": 1, "}": -1}.get(token, 0)
        if token == "}" and depth == 0:
            return index
    raise ValueError(f"pattern {pattern!r}: '{{' at position {start} is never closed")


@lru_cache(maxsize=4096)
def _expand(pattern: str) -> tuple[str, ...]:
    for index, token in _tokens(pattern):
        if token == "{":
            end = _brace_end(pattern, index)
            head, body, tail = pattern[:index], pattern[index + 1:end], pattern[end + 1:]
            results: list[str] = []
            for alternative in _split_top(body):
                for expanded in _expand(head + alternative + tail):
                    if expanded not in results:
                        results.append(expanded)
            return tuple(results)
    return (pattern,)


def expand_braces(pattern: str) -> list[str]:
    """``model.layers.{0,1}.*`` -> ``['model.layers.0.*', 'model.layers.1.*']`` (nested braces too).

    Raises ValueError naming the problem when the pattern is malformed.
    """
    error = pattern_error(pattern)
    if error:
        raise ValueError(error)
    return list(_expand(pattern))


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{translate(p)})" for p in expand_braces(pattern)))


def match_any(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` matches at least one of ``patterns``."""
    return any(_compiled(pattern).match(name) for pattern in patterns)


def matches(name: str, include: Sequence[str], exclude: Sequence[str] = ()) -> bool:
    """Whether a module ``name`` is selected: in ``include`` (empty = everything) and not in ``exclude``."""
    if include and not match_any(name, include):
        return False
    return not match_any(name, exclude)
