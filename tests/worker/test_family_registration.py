"""Adding a model family is one module with one ``Family`` plus one registration (``quantjob.families``):
a fake family registered here is accepted by admission, named by its ``--model_type`` names, run by the
worker's adapter lookup, judged by the output rules with its own fused linears, and built as a demo
model, with nothing else edited; taking it back removes it from all of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from quantjob.api.model_types import family_for_name, model_type_problems
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.rules_output import layout_for, output_problems
from quantjob.families import Demo, Family, LayerLayout, model_types, register, unregister
from quantjob.families.adapter import Adapter
from quantjob.families.shared import ATTN, LLAMA_SUBGRAPHS
from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.adapters import adapter_for
from quantjob.worker.model.demo import demo_config, family_names

# A Llama-like family whose engine fuses q/k/v only (gate and up stay two modules).
FAKE = Family(
    adapter=Adapter("fake_lm", LLAMA_SUBGRAPHS),
    layout=LayerLayout("model.layers", (("self_attn.qkv_proj", ATTN),)),
    demo=Demo("LlamaConfig", lambda shape: {"attention_bias": True}),
    names=("fakelm-",),
    other_architectures=("fakelm-vision",),
    wrappers=("fake_lm_vl",),
)


@pytest.fixture
def registered() -> Iterator[Family]:
    register(FAKE)
    try:
        yield FAKE
    finally:
        unregister(FAKE.model_type)


def _split_gate_up() -> ModelslimConfig:
    """W8A8 everywhere but up_proj, written to an ascendv1 output."""
    weight = {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}
    act = {"scope": "per_tensor", "dtype": "int8", "symmetric": False, "method": "minmax"}
    return ModelslimConfig.model_validate({"apiversion": "modelslim_v1", "spec": {
        "process": [{"type": "linear_quant", "qconfig": {"weight": weight, "act": act}, "include": ["*"],
                     "exclude": ["*.mlp.up_proj", "lm_head"]}],
        "save": [{"type": "ascendv1_saver"}]}})


def _fused_paths(model_config: dict[str, Any]) -> list[str]:
    return [p.path for p in output_problems(_split_gate_up(), model_config, prefix="") if "one module" in p.message]


def test_a_registered_family_reaches_every_table(registered: Family) -> None:
    config = {"model_type": "fake_lm", "num_hidden_layers": 2}
    # admission and the CLI: the model type and its names
    assert "fake_lm" in model_types()
    assert model_type_problems(config, None, override_at="spec.model.type") == []
    assert model_type_problems(None, "FakeLM-7B-Chat", override_at="spec.model.type") == []
    assert family_for_name("FakeLM-7B") == family_for_name("fake_lm") == "fake_lm"
    assert family_for_name("FakeLM-Vision-2B") is None  # another architecture, refused by name
    wrapper = model_type_problems({"model_type": "fake_lm_vl"}, None, override_at="spec.model.type")
    assert len(wrapper) == 1 and "fake_lm language model inside a multimodal wrapper" in wrapper[0].message
    # the worker
    assert adapter_for(config) is FAKE.adapter
    assert adapter_for({"model_type": "llama"}, "FakeLM-7B") is FAKE.adapter
    with pytest.raises(QuantJobError, match="'fake_lm_vl'.*multimodal wrapper"):
        adapter_for({"model_type": "fake_lm_vl"})
    # the output rules: its own fused linears (gate/up are not fused for it, as they are for Llama)
    assert layout_for(config) is FAKE.layout
    assert _fused_paths(config) == []
    assert _fused_paths({"model_type": "llama", "num_hidden_layers": 2}) == ["spec.process[0].exclude"]
    # the demo models and the tests' family lists
    assert "fake_lm" in family_names() and "fake_lm" in family_names(moe=False)
    assert "fake_lm" not in family_names(moe=True)
    built = demo_config("fake_lm", num_layers=1)
    assert type(built).__name__ == "LlamaConfig" and built.attention_bias is True


def test_taking_it_back_leaves_the_tables_as_they_were(registered: Family) -> None:
    unregister(FAKE.model_type)
    try:
        assert "fake_lm" not in model_types() and "fake_lm" not in family_names()
        assert family_for_name("FakeLM-7B") is None
        assert model_type_problems({"model_type": "fake_lm"}, None, override_at="spec.model.type")
        with pytest.raises(QuantJobError, match="'fake_lm'.*is not supported"):
            adapter_for({"model_type": "fake_lm"})
        assert layout_for({"model_type": "fake_lm"}) is not FAKE.layout
        with pytest.raises(ValueError, match="unknown demo family 'fake_lm'"):
            demo_config("fake_lm")
    finally:
        register(FAKE)


@pytest.mark.parametrize(("change", "message"), [
    ({}, "'fake_lm' is already registered"),
    ({"adapter": Adapter("other_lm", LLAMA_SUBGRAPHS), "names": ("qwen3",)}, "'qwen3' already resolves to 'qwen3'"),
    ({"adapter": Adapter("other_lm", LLAMA_SUBGRAPHS), "names": ("fakelm-",)}, "'fakelm-' already resolves"),
    ({"adapter": Adapter("gemma3", LLAMA_SUBGRAPHS), "names": ()}, "'gemma3' is already registered"),
    ({"adapter": Adapter("other_lm", LLAMA_SUBGRAPHS), "names": (), "other_architectures": (),
      "wrappers": ("fake_lm_vl",)}, "wrapper model type is already registered"),
])
def test_a_family_that_would_take_anothers_names_is_refused(registered: Family, change: dict[str, Any],
                                                            message: str) -> None:
    fields = {"adapter": FAKE.adapter, "layout": FAKE.layout, "demo": FAKE.demo, "names": FAKE.names,
              "other_architectures": FAKE.other_architectures, "wrappers": FAKE.wrappers, **change}
    with pytest.raises(ValueError, match=message):
        register(Family(**fields))
    assert family_for_name("Qwen3-8B") == "qwen3"
