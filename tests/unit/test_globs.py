from __future__ import annotations

import time

import pytest

from quantjob.api.globs import (
    MAX_BRACE_DEPTH,
    MAX_EXPANDED_CHARS,
    MAX_EXPANSIONS,
    MAX_PATTERN_LENGTH,
    expand_braces,
    expansion_size,
    match_any,
    matches,
    pattern_error,
)


@pytest.mark.parametrize(("pattern", "expected"), [
    ("model.layers.{0,1,2}.*", ["model.layers.0.*", "model.layers.1.*", "model.layers.2.*"]),
    ("a{b,c{d,e}}f", ["abf", "acdf", "acef"]),
    ("{x,y}.{1,2}", ["x.1", "x.2", "y.1", "y.2"]),
    ("no-braces*", ["no-braces*"]),
    ("x[{]y", ["x[{]y"]),            # inside a class, a brace is just a character
    ("{a,}b", ["ab", "b"]),           # an empty alternative
    ("{a,a}", ["a"]),                 # duplicates collapse
])
def test_expand_braces(pattern: str, expected: list[str]) -> None:
    assert expand_braces(pattern) == expected


@pytest.mark.parametrize(("pattern", "fragment"), [
    ("", "empty pattern"),
    ("model.layers.{0,1.*", "'{' never closed"),
    ("model.layers.0,1}.*", "'}' at position 16"),
    ("layer[12", "'[' at position 5 is never closed"),
    ("layer]1", "']' at position 5"),
])
def test_malformed_patterns_are_named(pattern: str, fragment: str) -> None:
    error = pattern_error(pattern)
    assert error is not None and fragment in error
    with pytest.raises(ValueError, match="pattern|empty"):
        expand_braces(pattern)


@pytest.mark.parametrize("pattern", ["*", "layer[!123]", "a{b,c}", "[]]x", "[!]]x", "model.layers.?.mlp"])
def test_wellformed_patterns(pattern: str) -> None:
    assert pattern_error(pattern) is None


@pytest.mark.parametrize(("name", "pattern", "hit"), [
    ("model.layers.0.mlp.down_proj", "*mlp*", True),           # '*' crosses dots
    ("model.layers.0.mlp.down_proj", "*self_attn*", False),
    ("layer1", "layer?", True),
    ("layer12", "layer?", False),
    ("layer2", "layer[123]", True),
    ("layer4", "layer[123]", False),
    ("layer4", "layer[!123]", True),
    ("layer2", "layer[!123]", False),
    ("model.layers.1.mlp.up_proj", "model.layers.{0,1}.*", True),
    ("model.layers.2.mlp.up_proj", "model.layers.{0,1}.*", False),
    ("model.layers.10.mlp.up_proj", "model.layers.{0,1}.*", False),
    ("Model.layers.0.q_proj", "model.*", False),               # case-sensitive
    ("lm_head", "lm_head", True),
])
def test_match_any(name: str, pattern: str, hit: bool) -> None:
    assert match_any(name, [pattern]) is hit


def test_exclude_wins_and_empty_include_selects_all() -> None:
    name = "model.layers.3.mlp.down_proj"
    assert matches(name, ["*"], [])
    assert not matches(name, ["*"], ["*down_proj"])
    assert not matches(name, ["*mlp*"], ["model.layers.{2,3}.*"])
    assert matches(name, [], [])
    assert not matches(name, ["*self_attn*"], [])


# --- bounded expansion (issue 14, item 5) ------------------------------------------------------

def test_a_short_brace_bomb_is_refused_before_anything_is_expanded() -> None:
    bomb = "{a,b}" * 18  # 90 characters, 262144 patterns: expanding it hung every rank
    started = time.perf_counter()
    error = pattern_error(bomb)
    assert error is not None and f"more than {MAX_EXPANSIONS} patterns" in error
    with pytest.raises(ValueError, match="expand to more than"):
        expand_braces(bomb)
    with pytest.raises(ValueError, match="expand to more than"):
        match_any("model.layers.0.mlp", [bomb])
    assert time.perf_counter() - started < 0.5


def test_the_bomb_is_refused_at_its_include_entry() -> None:
    from pydantic import ValidationError

    from quantjob.api.modelslim import LinearQuant

    with pytest.raises(ValidationError) as caught:
        LinearQuant.model_validate({"qconfig": {"weight": {"scope": "per_channel"}},
                                    "include": ["*", "x" + "{a,b}" * 18]})
    assert caught.value.errors()[0]["loc"][:2] == ("include", 1)


@pytest.mark.parametrize(("pattern", "fragment"), [
    ("{" * (MAX_BRACE_DEPTH + 1) + "a" + "}" * (MAX_BRACE_DEPTH + 1), "nested more than"),
    ("a" * (MAX_PATTERN_LENGTH + 1), f"at most {MAX_PATTERN_LENGTH}"),
    ("{a,b}" * 8 + "x" * 70, f"{MAX_EXPANDED_CHARS} characters"),  # 256 patterns of 78 characters
])
def test_deep_long_and_wide_patterns_are_refused(pattern: str, fragment: str) -> None:
    error = pattern_error(pattern)
    assert error is not None and fragment in error


def test_sizes_are_exact_below_the_limits() -> None:
    layers = "model.layers.{" + ",".join(str(i) for i in range(80)) + "}.{self_attn,mlp}.*"
    expanded = expand_braces(layers)
    assert pattern_error(layers) is None and len(expanded) == 160
    assert expansion_size(layers) == (160, sum(len(p) for p in expanded))
    assert expansion_size("{" * MAX_BRACE_DEPTH + "a" + "}" * MAX_BRACE_DEPTH) == (1, 1)
