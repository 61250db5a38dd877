from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import EXAMPLES, load, practice_files
from pydantic import ValidationError

from quantjob.api.modelslim import (
    FlexSmoothQuant,
    Group,
    IterSmooth,
    LinearQuant,
    ModelslimConfig,
    OtherProcessor,
)
from quantjob.api.problems import from_validation_error


def paths_of(data: Any) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        ModelslimConfig.model_validate(data)
    return [p.path for p in from_validation_error(caught.value)]


def lq(**extra: Any) -> dict[str, Any]:
    return {"type": "linear_quant",
            "qconfig": {"weight": {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}},
            **extra}


@pytest.mark.parametrize("path", practice_files(), ids=lambda p: p.name)
def test_practice_configs_parse_unchanged(path: Path) -> None:
    data = load(path)
    config = ModelslimConfig.model_validate(data)
    assert len(config.spec.process) == len(data["spec"]["process"])
    dumped = config.model_dump(mode="json", exclude_unset=True)
    assert [p["type"] for p in dumped["spec"]["process"]] == [p["type"] for p in data["spec"]["process"]]
    assert ModelslimConfig.model_validate(dumped) == config  # the dump is itself a valid config


def test_anchor_holders_and_spec_dataset_are_kept() -> None:
    config = ModelslimConfig.model_validate(load(EXAMPLES / "configs" / "qwen3-8b-w8a8-dynamic.yaml"))
    assert config.model_extra is not None and "default_w8a8_dynamic" in config.model_extra
    assert config.calibration_dataset() == "mix_calib.jsonl"
    assert config.linear_quants()[0][1].qconfig.act.scope == "per_token"


def test_processor_models_and_options() -> None:
    config = ModelslimConfig.model_validate(load(Path(__file__).parent / "data/practice/qwq-32b-w8a8.yaml"))
    quarot, smooth, linear = config.spec.process
    assert isinstance(quarot, OtherProcessor) and quarot.model_extra == {"block_size": 32}
    assert isinstance(smooth, IterSmooth)
    assert (smooth.alpha, smooth.scale_min, smooth.enable_subgraph_type) == (0.5, 1e-5, ["norm-linear", "up-down"])
    assert isinstance(linear, LinearQuant) and linear.exclude == ["lm_head", "*.down_proj"]


def test_iter_smooth_defaults_follow_msmodelslim() -> None:
    smooth = IterSmooth()
    assert (smooth.alpha, smooth.scale_min, smooth.symmetric) == (0.9, 1e-5, True)
    assert smooth.enable_subgraph_type == ["norm-linear", "linear-linear", "ov", "up-down"]


def test_flex_smooth_alias_and_group() -> None:
    config = ModelslimConfig.model_validate({"spec": {"process": [
        {"type": "flex_smooth", "alpha": 0.5},
        {"type": "group", "configs": [lq(include=["*self_attn*"]), lq(include=["*mlp*"], exclude=["*gate"])]},
    ]}})
    flex, group = config.spec.process
    assert isinstance(flex, FlexSmoothQuant) and flex.alpha == 0.5 and flex.beta is None
    assert isinstance(group, Group)
    assert [path for path, _ in config.linear_quants()] == ["spec.process[1].configs[0]",
                                                            "spec.process[1].configs[1]"]


def test_include_null_means_everything() -> None:
    config = ModelslimConfig.model_validate({"spec": {"process": [lq(include=None, exclude=None)]}})
    assert config.linear_quants()[0][1].include == ["*"]
    assert config.linear_quants()[0][1].exclude == []


def test_saver_part_file_size() -> None:
    config = ModelslimConfig.model_validate({"spec": {"process": [lq()], "save": [
        {"type": "ascendv1_saver", "part_file_size": 4}, {"type": "ascendv1_saver", "part_file_size": 0}]}})
    first, second = config.spec.save
    assert first.part_bytes == 4 * 1024 ** 3
    assert second.part_file_size is None and second.part_bytes is None


def test_ssz_steps_and_group_size() -> None:
    config = ModelslimConfig.model_validate({"spec": {"process": [{"type": "linear_quant", "qconfig": {"weight": {
        "scope": "per_group", "dtype": "int4", "method": "ssz", "ext": {"group_size": 64, "step": 20}}}}]}})
    weight = config.linear_quants()[0][1].qconfig.weight
    assert (weight.group_size, weight.steps, weight.bits) == (64, 20, 4)
    assert ModelslimConfig.model_validate({"spec": {"process": [lq()]}}).linear_quants()[0][1] \
        .qconfig.weight.steps == 50


def test_unknown_keys_inside_spec_are_errors_everywhere_at_once() -> None:
    data = {"spec": {"runer": "auto", "process": [
        lq(includes=["*"]),
        {"type": "awq"},                                   # known, unmodelled: parses
        {"type": "iter_smooth", "alpah": 0.5},
    ], "save": [{"type": "ascendv1_saver", "part_size": 4}]}}
    assert sorted(paths_of(data)) == sorted([
        "spec.runer", "spec.process[0].includes", "spec.process[2].alpah", "spec.save[0].part_size"])


def test_unknown_processor_is_reported_with_the_other_errors() -> None:
    paths = paths_of({"spec": {"process": [{"type": "linear_qaunt"}, lq(exclude=["a{b"])]}})
    assert paths == ["spec.process[0].type", "spec.process[1].exclude[0]"]


def test_unknown_processor_suggests_the_name() -> None:
    with pytest.raises(ValidationError, match="did you mean 'linear_quant'"):
        ModelslimConfig.model_validate({"spec": {"process": [{"type": "linear_qaunt"}]}})


@pytest.mark.parametrize(("data", "path"), [
    ({"spec": {"process": ["linear_quant"]}}, "spec.process[0]"),
    ({"spec": {"process": [{"qconfig": {}}]}}, "spec.process[0]"),
    ({"spec": {"process": []}}, "spec.process"),
    ({"spec": {"process": [lq()], "runner": "pipeline"}}, "spec.runner"),
    ({"apiversion": "modelslim_v2", "spec": {"process": [lq()]}}, "apiversion"),
    ({"apiversion": "modelslim_v0", "spec": {"calib_cfg": {}}}, "apiversion"),
    ({"spec": {"process": [lq(include=["layer[1"])]}}, "spec.process[0].include[0]"),
    ({"spec": {"process": [{"type": "linear_quant", "qconfig": {"weight": {"dtype": "int3"}}}]}},
     "spec.process[0].qconfig.weight.dtype"),
    ({"spec": {"process": [{"type": "linear_quant", "qconfig": {"weight": {"ext": {"group_size": 0}}}}]}},
     "spec.process[0].qconfig.weight.ext.group_size"),
    ({"spec": {"process": [{"type": "iter_smooth", "alpha": 1.5}]}}, "spec.process[0].alpha"),
    ({"spec": {"process": [{"type": "iter_smooth", "enable_subgraph_type": ["norm-norm"]}]}},
     "spec.process[0].enable_subgraph_type[0]"),
    ({"spec": {"process": [{"type": "group", "configs": [lq(), {"type": "awq"}]}]}},
     "spec.process[0].configs[1].type"),
    ({"spec": {"process": [lq()], "save": [{"type": "zip_saver"}]}}, "spec.save[0].type"),
    ({"spec": {"process": [lq()], "save": [{"part_file_size": -1}]}}, "spec.save[0].part_file_size"),
])
def test_invalid_fields_have_paths(data: Any, path: str) -> None:
    assert path in paths_of(data)


def test_yaml_float_spelling_of_scale_min() -> None:
    # PyYAML reads 1e-5 (no dot) as a string; msModelSlim's configs write it that way.
    data = yaml.safe_load("spec: {process: [{type: iter_smooth, scale_min: 1e-5}]}")
    assert data["spec"]["process"][0]["scale_min"] == "1e-5"
    assert ModelslimConfig.model_validate(data).spec.process[0].scale_min == 1e-5
