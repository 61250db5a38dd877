from __future__ import annotations

import copy

import pytest

from quantjob.api.check import resolve
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.presets import QUANT_TYPES, SUMMARIES, preset, preset_dict


def test_quant_types() -> None:
    assert set(QUANT_TYPES) == {"w8a8", "w8a8_dynamic", "w8a16", "w4a16"}
    assert set(SUMMARIES) == set(QUANT_TYPES)  # every preset says what it does in --help


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("devices", [1, 3])
def test_every_preset_passes_the_check(quant_type: str, devices: int) -> None:
    result = resolve(preset(quant_type), devices)
    assert result.problems == []
    assert result.world_size == devices


def test_preset_shapes() -> None:
    w8a8 = preset("w8a8").linear_quants()[0][1].qconfig
    assert (w8a8.act.scope, w8a8.act.symmetric, w8a8.weight.scope, w8a8.weight.symmetric) == \
        ("per_tensor", False, "per_channel", True)
    assert preset("W8A8_DYNAMIC").linear_quants()[0][1].qconfig.act.scope == "per_token"
    assert preset("w8a16").linear_quants()[0][1].qconfig.act is None
    w4 = preset("w4a16").linear_quants()[0][1].qconfig.weight
    assert (w4.scope, w4.dtype, w4.group_size, w4.bits) == ("per_group", "int4", 128, 4)


def test_w8a8_dynamic_is_msmodelslim_default_recipe() -> None:
    """The dynamic preset runs what msModelSlim's fallback config for its w8a8 quant type runs (a
    W8A8_DYNAMIC model): iter_smooth at its defaults on every layer, then per-token int8 activations."""
    from pathlib import Path

    import yaml

    default = ModelslimConfig.model_validate(
        yaml.safe_load((Path(__file__).parent / "data/practice/default-w8a8.yaml").read_text()))
    ours = preset("w8a8_dynamic")
    assert [(p.type, p.include) for p in ours.spec.process] == [(p.type, p.include) for p in default.spec.process]
    assert ours.spec.process[0].model_dump() == default.spec.process[0].model_dump()
    assert ours.linear_quants()[0][1].qconfig == default.linear_quants()[0][1].qconfig
    # the other presets quantize alone: a smoothing processor is the user's choice there
    assert [[p.type for p in preset(q).spec.process] for q in ("w8a8", "w8a16", "w4a16")] == [["linear_quant"]] * 3


def test_preset_dict_is_a_plain_modelslim_document() -> None:
    data = preset_dict("w8a8")
    assert data["apiversion"] == "modelslim_v1"
    assert ModelslimConfig.model_validate(data) == preset("w8a8")
    # every call gives fresh data: callers (bench_real, tests) edit it without touching the presets
    for key in QUANT_TYPES:
        before = copy.deepcopy(preset_dict(key))
        mine = preset_dict(key)
        for entry in mine["spec"]["process"]:
            for part in entry.get("qconfig", {}).values():  # act, weight: shared module constants once
                part.clear()
            entry.clear()
        assert preset_dict(key) == before, key


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="w8a8, w8a8_dynamic, w8a16, w4a16"):
        preset("w3a5")
