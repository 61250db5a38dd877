"""The compatibility rules of iter_smooth, flex_smooth_quant and ssz (quantjob.api.smoothing_rules),
each asserting the exact problem path, and the practice configs that use these algorithms."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import PRACTICE, load
from pydantic import ValidationError

from quantjob.api.check import check, check_document
from quantjob.api.modelslim import FlexSmoothQuant, ModelslimConfig
from quantjob.api.problems import Problem, from_validation_error

W8 = {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}
STATIC = {"scope": "per_tensor", "dtype": "int8", "symmetric": False, "method": "minmax"}
DYNAMIC = {"scope": "per_token", "dtype": "int8", "symmetric": True, "method": "minmax"}


def lq(act: dict[str, Any] | None = STATIC, weight: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    qconfig: dict[str, Any] = {"weight": {**W8, **(weight or {})}}
    if act is not None:
        qconfig["act"] = act
    return {"type": "linear_quant", "qconfig": qconfig, **extra}


def problems_of(*process: dict[str, Any], devices: int = 2) -> list[Problem]:
    return check(ModelslimConfig.model_validate({"spec": {"process": list(process)}}), devices, prefix="")


def at(problems: list[Problem], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, f"expected one problem at {path}, got {problems}"
    return found[0]


def test_bare_flex_smooth_runs_with_defaults_under_dp() -> None:
    config = ModelslimConfig.model_validate({"spec": {"process": [{"type": "flex_smooth"}, lq()]}})
    smooth = config.spec.process[0]
    assert isinstance(smooth, FlexSmoothQuant) and smooth.alpha is None and smooth.beta is None
    assert smooth.enable_subgraph_type == ["norm-linear", "linear-linear", "ov", "up-down"]
    assert check(config, 4, prefix="") == []


@pytest.mark.parametrize("smooth", [{"type": "iter_smooth"}, {"type": "flex_smooth_quant"}])
def test_smoothing_after_quantization_is_refused(smooth: dict[str, Any]) -> None:
    problem = at(problems_of(lq(), smooth), "spec.process[1]")
    assert "after the linear_quant at spec.process[0]" in problem.message and "move it before" in problem.message
    group = {"type": "group", "configs": [lq()]}
    assert at(problems_of(group, smooth), "spec.process[1]").severity == "error"
    assert problems_of(smooth, lq()) == []


def test_smoothing_inside_a_group_is_refused() -> None:
    data = {"spec": {"process": [{"type": "group", "configs": [lq(), {"type": "flex_smooth"}]}]}}
    with pytest.raises(ValidationError) as caught:
        ModelslimConfig.model_validate(data)
    (problem,) = from_validation_error(caught.value)
    assert problem.path == "spec.process[0].configs[1].type" and "before the group" in problem.message


def test_unknown_subgraph_type_is_named() -> None:
    result = check_document({"spec": {"process": [{"type": "iter_smooth", "enable_subgraph_type": ["norm-linear",
                                                                                                     "qk"]}, lq()]}})
    problem = at(result.problems, "spec.process[0].enable_subgraph_type[1]")
    assert "'norm-linear', 'linear-linear', 'ov' or 'up-down'" in problem.message


def test_asymmetric_iter_smooth_warns_where_the_shift_may_be_dropped() -> None:
    smooth = {"type": "iter_smooth", "symmetric": False}
    for entry in (lq(act=DYNAMIC), lq(act=None)):
        problem = at(problems_of(smooth, entry), "spec.process[0].symmetric")
        assert problem.severity == "warning" and "quant_bias" in problem.message
    mixed = problems_of(smooth, lq(include=["*self_attn*"]), lq(act=DYNAMIC, include=["*mlp*"]))
    assert "spec.process[2]" in at(mixed, "spec.process[0].symmetric").message
    assert problems_of(smooth, lq()) == []
    assert problems_of({**smooth, "enable_subgraph_type": ["ov", "up-down"]}, lq(act=DYNAMIC)) == []


def test_flex_alpha_alone_is_searched_with_a_warning() -> None:
    problem = at(problems_of({"type": "flex_smooth", "alpha": 0.5}, lq()), "spec.process[0].alpha")
    assert problem.severity == "warning"
    assert problems_of({"type": "flex_smooth", "alpha": 0.5, "beta": 0.4}, lq()) == []


def test_ssz_rules() -> None:
    assert problems_of(lq(weight={"method": "ssz"})) == []
    assert problems_of(lq(act=None, weight={"method": "ssz", "dtype": "int4"})) == []
    asymmetric = at(problems_of(lq(act=None, weight={"method": "ssz", "symmetric": False})),
                    "spec.process[0].qconfig.weight.symmetric")
    assert "symmetric" in asymmetric.message
    grouped = at(problems_of(lq(act=None, weight={"method": "ssz", "scope": "per_group", "dtype": "int4",
                                                  "ext": {"group_size": 64}})), "spec.process[0].qconfig.weight.method")
    assert "per_channel" in grouped.message and "per_group" in grouped.message


# The practice configs that use iter_smooth / flex_smooth_quant / ssz and nothing quantjob lacks.
# (glm-5 and qwq start with quarot; qwen3-30b-w4a8 quantizes int4 weights with int8 activations, W4A8.)
RUNNABLE_PRACTICE = ["default-w8a8.yaml", "dense-w8a8-itersmooth.yaml", "qwen3-vl-4b-w8a8.yaml"]


@pytest.mark.parametrize("name", RUNNABLE_PRACTICE)
def test_practice_configs_with_smoothing_validate(name: str) -> None:
    result = check_document(load(PRACTICE / name))
    assert result.ok, result.problems


@pytest.mark.parametrize(("name", "reason"), [("glm-5-w8a8.yaml", "quarot"), ("qwq-32b-w8a8.yaml", "quarot"),
                                              ("qwen3-30b-w4a8.yaml", "int4 weights")])
def test_other_practice_configs_fail_only_for_what_quantjob_lacks(name: str, reason: str) -> None:
    result = check_document(load(PRACTICE / name))
    errors = [p for p in result.problems if p.severity == "error"]
    assert errors and all(reason in p.message for p in errors), errors
