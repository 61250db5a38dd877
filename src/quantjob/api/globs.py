"""Module-name globs of ``include``/``exclude``: ``*``, ``?``, ``[abc]``, ``[!abc]`` and brace lists.

Matching is case-sensitive and ``*`` crosses dots (``*mlp*`` matches ``model.layers.0.mlp.up_proj``),
as in msModelSlim. A brace list ``model.layers.{0,1,2}.*`` stands for one pattern per alternative;
braces nest. Inside ``[...]`` braces are ordinary characters. ``exclude`` wins over ``include``,
and an empty ``include`` selects every name.

Brace lists multiply (``{a,b}{c,d}`` is four patterns), so a short pattern could stand for
millions: a pattern is refused when it is longer than ``MAX_PATTERN_LENGTH``, nests braces deeper
than ``MAX_BRACE_DEPTH`` or expands to more than ``MAX_EXPANSIONS`` patterns or
``MAX_EXPANDED_CHARS`` characters. Both sizes are worked out from the brace structure in one
pass, before anything is expanded, so checking a pattern takes time linear in its length and
expanding (and compiling) an accepted one is bounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from fnmatch import fnmatchcase, translate
from functools import lru_cache
from typing import Any

MAX_PATTERN_LENGTH = 1024
MAX_BRACE_DEPTH = 16
MAX_EXPANSIONS = 1024
MAX_EXPANDED_CHARS = 16384
# every include/exclude pattern of one config together (what the worker compiles)
MAX_CONFIG_EXPANDED_CHARS = 262144


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
    """What is wrong with ``pattern`` (unbalanced braces or brackets, empty, too long, too deep, too
    large an expansion), or None when it is valid."""
    measured = _measure(pattern)
    if isinstance(measured, str):
        return measured
    count, chars = measured
    if count > MAX_EXPANSIONS or chars > MAX_EXPANDED_CHARS:
        shown = f"{pattern[:60]!r}{'...' if len(pattern) > 60 else ''}"
        return (f"pattern {shown}: its brace lists expand to more than {MAX_EXPANSIONS} patterns or "
                f"{MAX_EXPANDED_CHARS} characters; use wildcards ('*', '?', '[0-9]') or fewer alternatives")
    return None


def expansion_size(pattern: str) -> tuple[int, int]:
    """(patterns, characters) that a valid ``pattern`` expands to, duplicates counted, each capped
    just above its limit; computed without expanding anything."""
    measured = _measure(pattern)
    if isinstance(measured, str):
        raise ValueError(measured)  # noqa: TRY004  # a malformed pattern is a bad value, as in expand_braces
    return measured


class _Frame:
    """Counts inside one brace group: the alternatives closed so far and the one being read."""

    def __init__(self) -> None:
        self.count = self.chars = 0           # closed alternatives: patterns, characters
        self.cur_count, self.cur_chars = 1, 0  # the current alternative (a sequence)

    def append(self, count: int, chars: int) -> None:
        """Concatenate ``count`` patterns of ``chars`` characters in all to the current alternative."""
        self.cur_chars = _cap(self.cur_chars * count + chars * self.cur_count, MAX_EXPANDED_CHARS)
        self.cur_count = _cap(self.cur_count * count, MAX_EXPANSIONS)

    def close_alternative(self) -> None:
        self.count = _cap(self.count + self.cur_count, MAX_EXPANSIONS)
        self.chars = _cap(self.chars + self.cur_chars, MAX_EXPANDED_CHARS)
        self.cur_count, self.cur_chars = 1, 0


def _cap(value: int, limit: int) -> int:
    return min(value, limit + 1)


def _measure(pattern: str) -> tuple[int, int] | str:
    """(patterns, characters) of the expansion, or what is wrong with the pattern; one pass."""
    if not isinstance(pattern, str) or not pattern:
        return "empty pattern; use '*' to select every module"
    if len(pattern) > MAX_PATTERN_LENGTH:
        return (f"pattern {pattern[:40]!r}... is {len(pattern)} characters; at most {MAX_PATTERN_LENGTH} "
                "are accepted (split it into several include/exclude entries)")
    frames = [_Frame()]
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "[":
            close = _bracket_end(pattern, index)
            if close < 0:
                return f"pattern {pattern!r}: '[' at position {index} is never closed; add ']'"
            frames[-1].append(1, close + 1 - index)
            index = close + 1
            continue
        if char == "]":
            return f"pattern {pattern!r}: ']' at position {index} has no opening '['"
        if char == "{":
            if len(frames) > MAX_BRACE_DEPTH:
                return (f"pattern {pattern[:40]!r}...: braces nested more than {MAX_BRACE_DEPTH} deep at "
                        f"position {index}; write the alternatives out")
            frames.append(_Frame())
        elif char == "," and len(frames) > 1:
            frames[-1].close_alternative()
        elif char == "}":
            if len(frames) == 1:
                return f"pattern {pattern!r}: '}}' at position {index} has no opening '{{'"
            group = frames.pop()
            group.close_alternative()
            frames[-1].append(group.count, group.chars)
        else:
            frames[-1].append(1, 1)
        index += 1
    if len(frames) > 1:
        return f"pattern {pattern!r}: {len(frames) - 1} '{{' never closed; add '}}' or remove the brace"
    return frames[0].cur_count, frames[0].cur_chars


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


# A parsed pattern: literal tokens and brace groups; a group is a list of alternatives, each a sequence.
Sequence_ = list[Any]


def _parse(pattern: str) -> Sequence_:
    """The pattern as a sequence of literal tokens and brace groups; ``pattern`` is known to be
    valid, so nesting is at most ``MAX_BRACE_DEPTH``."""
    root: Sequence_ = []
    stack: list[Sequence_] = [root]
    groups: list[list[Sequence_]] = []
    for _, token in _tokens(pattern):
        if token == "{":
            group: list[Sequence_] = [[]]
            stack[-1].append(group)
            groups.append(group)
            stack.append(group[0])
        elif token == "," and groups:
            groups[-1].append([])
            stack[-1] = groups[-1][-1]
        elif token == "}" and groups:
            groups.pop()
            stack.pop()
        else:
            stack[-1].append(token)
    return root


def _expand_sequence(sequence: Sequence_) -> list[str]:
    """Every string a parsed sequence stands for, in order, duplicates removed."""
    results = [""]
    for item in sequence:
        if isinstance(item, str):
            results = [text + item for text in results]
        else:
            choices = [text for alternative in item for text in _expand_sequence(alternative)]
            results = [text + choice for text in results for choice in choices]
    return list(dict.fromkeys(results))


@lru_cache(maxsize=4096)
def _expand(pattern: str) -> tuple[str, ...]:
    return tuple(_expand_sequence(_parse(pattern)))


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


def names_literally(patterns: Sequence[str], name: str) -> bool:
    """Whether a pattern names ``name`` (e.g. ``lm_head``) in its text, not only through wildcards:
    one of its expansions contains ``name`` and matches it."""
    return any(name in expanded and fnmatchcase(name, expanded)
               for pattern in patterns for expanded in expand_braces(pattern))
