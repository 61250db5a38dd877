"""Adapters: one declarative entry per family, and their names exist in the real decoder layers."""

from __future__ import annotations

import pytest
import torch
import transformers

from quantjob.worker.adapters import ADAPTERS, adapter_for, supported_model_types
from quantjob.worker.demo import FAMILIES, demo_config
from quantjob.worker.errors import QuantJobError


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_names_exist_in_the_model(family: str) -> None:
    config = demo_config(family, num_layers=1)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    adapter = adapter_for(config.to_dict())
    assert adapter.name == family
    for path in (adapter.embed, adapter.final_norm, adapter.rotary, adapter.lm_head):
        model.get_submodule(path)
    layer = model.get_submodule(adapter.layers)[0]
    for subgraph in adapter.subgraphs(config.to_dict()):
        source = layer.get_submodule(subgraph.source)
        assert isinstance(source, torch.nn.Linear) == (subgraph.kind != "norm-linear")
        assert all(isinstance(layer.get_submodule(name), torch.nn.Linear) for name in subgraph.targets)
        if subgraph.kind == "ov":
            assert subgraph.heads is not None
            assert source.out_features == subgraph.heads.num_kv_heads * subgraph.heads.head_dim
            assert layer.get_submodule(subgraph.targets[0]).in_features == \
                subgraph.heads.num_heads * subgraph.heads.head_dim
    for norm in adapter.extra_norms:
        layer.get_submodule(norm)


def test_unsupported_architecture_lists_supported() -> None:
    with pytest.raises(QuantJobError) as info:
        adapter_for({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, config_file="/m/config.json")
    message = str(info.value)
    assert "/m/config.json" in message and "gpt2" in message and "GPT2LMHeadModel" in message
    assert all(name in message for name in supported_model_types())


def test_model_type_override_by_msmodelslim_name() -> None:
    assert adapter_for({"model_type": "llama"}, "Qwen2.5-7B-Instruct") is ADAPTERS["qwen2"]
    assert adapter_for({}, "Qwen3-8B") is ADAPTERS["qwen3"]
    with pytest.raises(QuantJobError, match="--model_type 'DeepSeek-V3'"):
        adapter_for({"model_type": "llama"}, "DeepSeek-V3")


def test_missing_model_type() -> None:
    with pytest.raises(QuantJobError, match="no 'model_type'"):
        adapter_for({})


def test_admission_knows_exactly_the_families_with_an_adapter() -> None:
    """``quantjob.api.model_types`` (no torch) refuses model types at admission; it must list the adapters."""
    from quantjob.api.model_types import LM_HEAD, MODEL_TYPES, family_for_name

    assert sorted(MODEL_TYPES) == supported_model_types()
    assert all(family_for_name(name) == name for name in MODEL_TYPES)
    assert {adapter.lm_head for adapter in ADAPTERS.values()} == {LM_HEAD}
