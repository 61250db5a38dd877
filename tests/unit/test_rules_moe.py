"""The MoE output rules (``quantjob.api.rules_moe``): each refusal with its field path and fix, the
layouts read from config.json, and what passes (the shipped mixed config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from quantjob.api.check import check
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.problems import Problem
from quantjob.api.rules_moe import moe_layout

W8 = {"scope": "per_channel", "dtype": "int8", "symmetric": True}
W4 = {"scope": "per_group", "dtype": "int4", "symmetric": True, "ext": {"group_size": 32}}
STATIC = {"scope": "per_tensor", "dtype": "int8", "symmetric": False}
DYNAMIC = {"scope": "per_token", "dtype": "int8", "symmetric": True}
QWEN3_MOE = {"model_type": "qwen3_moe", "num_hidden_layers": 4, "num_experts": 8, "decoder_sparse_step": 1,
             "mlp_only_layers": [], "dtype": "bfloat16"}
DEEPSEEK_V3 = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "n_routed_experts": 256,
               "first_k_dense_replace": 3, "moe_layer_freq": 1, "dtype": "bfloat16"}
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"


def lq(weight: dict[str, Any], act: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "linear_quant", "qconfig": {"weight": weight} | ({"act": act} if act else {}), **extra}


def cfg(*process: dict[str, Any], saver: str = "ascendv1_saver") -> ModelslimConfig:
    return ModelslimConfig.model_validate({"apiversion": "modelslim_v1", "spec": {
        "process": list(process), "save": [{"type": saver}]}})


def errors(config: ModelslimConfig, model_config: dict[str, Any] | None = QWEN3_MOE) -> list[Problem]:
    return [p for p in check(config, 1, model_config, prefix="") if p.severity == "error"]


def one(problems: list[Problem], path: str, *needles: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, f"expected one problem at {path}: {problems}"
    for needle in needles:
        assert needle in found[0].message, (needle, found[0].message)
    return found[0]


ROUTER_FLOAT = ["*mlp.gate"]


def test_static_w8a8_on_experts_is_refused_for_ascendv1_with_the_mixed_config_as_fix() -> None:
    problems = errors(cfg(lq(W8, STATIC)))
    one(problems, "spec.process[0].qconfig.act.scope", "layer 0 (and 3 more MoE layers)",
        "model.layers.0.mlp.experts.0.gate_proj", "only int8 MoE scheme is W8A8_DYNAMIC", "(W8A8, moe)",
        "qwen3-30b-a3b-w8a8-mixed.yaml", "per_token")
    assert len(problems) == 1


def test_w8a16_on_experts_is_refused_for_ascendv1() -> None:
    one(errors(cfg(lq(W8, exclude=ROUTER_FLOAT))), "spec.process[0].qconfig.act", "W8A16", "(W8A16, moe)")


def test_the_mixed_entries_pass() -> None:
    mixed = cfg(lq(W8, STATIC, include=["*self_attn*"]), lq(W8, DYNAMIC, include=["*mlp*"], exclude=ROUTER_FLOAT))
    assert errors(mixed) == []
    assert errors(mixed, DEEPSEEK_V3) == []
    # float experts load too (an unquantized MoE layer)
    assert errors(cfg(lq(W8, STATIC, include=["*self_attn*"]))) == []


def test_an_include_that_names_the_router_is_refused() -> None:
    problem = one(errors(cfg(lq(W8, DYNAMIC, include=["*mlp.experts.*", "*mlp.gate"]))), "spec.process[0].include",
                  "model.layers.0.mlp.gate (the router) is named", "keeps the router float",
                  "remove it from spec.process[0].include")
    assert "(and 3 more MoE layers)" in problem.message
    one(errors(cfg(lq(W8, DYNAMIC, include=["model.layers.{1,2}.mlp.gate"]))), "spec.process[0].include",
        "layer 1 (and 1 more MoE layers)")
    # wildcards that only happen to match it select nothing there (the router is not a linear): they pass,
    # and so do the experts' own names
    for include in (["*"], ["*mlp*"], ["*mlp.experts.*", "*self_attn*"], ["*mlp.experts.*.gate_proj", "*mlp.experts.*.up_proj", "*mlp.experts.*.down_proj"]):
        assert errors(cfg(lq(W8, DYNAMIC, include=include))) == [], include
    # an exclude that keeps it out is fine, and a dense model has no router
    assert errors(cfg(lq(W8, DYNAMIC, include=["*mlp.gate", "*experts*"], exclude=["*mlp.gate"]))) == []
    assert errors(cfg(lq(W8, DYNAMIC, include=["*mlp.gate"])), {"model_type": "qwen3", "num_hidden_layers": 4}) == []
    # DeepSeek-V3's dense layers 0-2 have no router
    assert errors(cfg(lq(W8, DYNAMIC, include=["model.layers.[0-2].mlp.gate"])), DEEPSEEK_V3) == []
    one(errors(cfg(lq(W8, DYNAMIC, include=["model.layers.[0-3].mlp.gate"])), DEEPSEEK_V3),
        "spec.process[0].include", "layer 3:", "model.layers.3.mlp.gate")


def test_every_expert_of_a_layer_shares_one_scheme() -> None:
    problem = one(errors(cfg(lq(W8, DYNAMIC, exclude=[*ROUTER_FLOAT, "model.layers.2.mlp.experts.5.*"]))),
                  "spec.process[0].exclude", "layer 2:", "experts.0.gate_proj W8A8_DYNAMIC", "experts.5.gate_proj FLOAT",
                  "take a MoE layer's scheme from experts.0", "'*mlp.experts.*'")
    assert "more" not in problem.message
    # gate/up/down of expert 0 differ (vllm-ascend: "Not all shards ... same quant type"): the family's layout
    # judges them as one fused module (one problem, with a fix that keeps every expert alike)
    one(errors(cfg(lq(W8, DYNAMIC, exclude=[*ROUTER_FLOAT, "*experts.*.down_proj"]))), "spec.process[0].exclude",
        "down_proj FLOAT", "as one module (experts)", "exclude '*.mlp.experts.*'")
    # ... and where the layout does not know the family, the MoE rule says it
    one(errors(cfg(lq(W8, DYNAMIC, exclude=[*ROUTER_FLOAT, "*experts.*.down_proj"])),
               {**QWEN3_MOE, "model_type": "some_moe"}), "spec.process[0].exclude", "experts.0.down_proj FLOAT")


def test_compressed_tensors_needs_the_exact_scheme_on_every_expert() -> None:
    w4_64 = {**W4, "ext": {"group_size": 64}}
    config = cfg(lq(W4, include=["*experts.[0-3].*"]), lq(w4_64, exclude=ROUTER_FLOAT),
                 saver="compressed_tensors_saver")
    one(errors(config), "spec.process[1].include", "experts.0.gate_proj W4A16 (per_group 32)",
        "experts.4.gate_proj W4A16 (per_group 64)")
    # for ascendv1 the type is what counts; W4A16 is refused there by the dense rule anyway
    assert errors(cfg(lq(W4, exclude=ROUTER_FLOAT), saver="compressed_tensors_saver")) == []


def test_compressed_tensors_refuses_static_w8a8_experts() -> None:
    one(errors(cfg(lq(W8, STATIC, exclude=ROUTER_FLOAT), saver="compressed_tensors_saver")),
        "spec.process[0].qconfig.act.scope", "CompressedTensorsW8A8Int8MoEMethod", "per_token")
    assert errors(cfg(lq(W8, DYNAMIC, exclude=ROUTER_FLOAT), saver="compressed_tensors_saver")) == []
    assert errors(cfg(lq(W8, exclude=ROUTER_FLOAT), saver="compressed_tensors_saver")) == []   # W8A16 (WNA16)


def test_compressed_tensors_warns_that_transformers_cannot_load_moe() -> None:
    config = cfg(lq(W8, DYNAMIC, exclude=ROUTER_FLOAT), saver="compressed_tensors_saver")
    problem = one(check(config, 1, QWEN3_MOE, prefix=""), "spec.save[0].type", "loads in vLLM, not in transformers")
    assert problem.severity == "warning"
    assert check(config, 1, {"model_type": "qwen3", "num_hidden_layers": 2}, prefix="") == []


def test_without_the_model_config_nothing_is_judged() -> None:
    assert errors(cfg(lq(W8, STATIC)), None) == []


@pytest.mark.parametrize(("config", "sparse", "experts"), [
    (QWEN3_MOE, (0, 1, 2, 3), 8),
    ({**QWEN3_MOE, "mlp_only_layers": [1], "decoder_sparse_step": 1}, (0, 2, 3), 8),
    ({**QWEN3_MOE, "decoder_sparse_step": 2}, (1, 3), 8),
    ({**DEEPSEEK_V3, "num_hidden_layers": 5}, (3, 4), 256),
    ({"model_type": "glm4_moe", "num_hidden_layers": 4, "n_routed_experts": 16, "first_k_dense_replace": 1},
     (1, 2, 3), 16),
    ({"model_type": "qwen3", "num_hidden_layers": 4}, None, 0),
    ({**QWEN3_MOE, "num_experts": 0}, None, 0),
    ({"model_type": "qwen3_moe", "num_hidden_layers": 2, "num_local_experts": 8, "mlp_only_layers": [0]}, (1,), 8),
])
def test_moe_layout_follows_transformers(config: dict[str, Any], sparse: tuple[int, ...] | None, experts: int) -> None:
    layout = moe_layout(config, "model.layers", config["num_hidden_layers"])
    if sparse is None:
        assert layout is None
    else:
        assert layout is not None and layout.sparse == sparse and layout.experts == experts


def test_every_expert_is_judged_quickly_on_deepseek_v3() -> None:
    import time

    started = time.monotonic()
    one(errors(cfg(lq(W8, DYNAMIC, exclude=[*ROUTER_FLOAT, "model.layers.60.mlp.experts.255.up_proj"])),
               DEEPSEEK_V3), "spec.process[0].exclude", "layer 60:", "experts.255.up_proj FLOAT")
    assert time.monotonic() - started < 10   # 58 layers x 256 experts x 3 projections, contended CI


@pytest.mark.parametrize("name", ["qwen3-30b-a3b-w8a8-mixed.yaml", "deepseek-v3-w8a8-mixed.yaml",
                                  "glm4.5-w8a8-dynamic.yaml"])
def test_shipped_moe_configs_pass_with_their_model(name: str) -> None:
    config = ModelslimConfig.model_validate(yaml.safe_load((EXAMPLES / name).read_text()))
    model = {"qwen3": QWEN3_MOE, "deepse": DEEPSEEK_V3}.get(name[:6], {
        "model_type": "glm4_moe", "num_hidden_layers": 4, "n_routed_experts": 16, "first_k_dense_replace": 1,
        "dtype": "bfloat16"})
    assert [p for p in check(config, 2, model, prefix="") if p.severity == "error"] == []


def test_the_deepseek_quantjob_example_carries_the_shipped_config() -> None:
    from quantjob.api.check import check_document

    manifest = yaml.safe_load((EXAMPLES.parent / "quantjobs" / "deepseek-v3-w8a8-mixed-npu16.yaml").read_text())
    shipped = ModelslimConfig.model_validate(yaml.safe_load((EXAMPLES / "deepseek-v3-w8a8-mixed.yaml").read_text()))
    inline = ModelslimConfig.model_validate(manifest["spec"]["config"])
    assert inline.spec.model_dump() == shipped.spec.model_dump()
    result = check_document(manifest, model_config=DEEPSEEK_V3)
    # (whether the family is supported is the family registry's problem at "config.json", not this rule's)
    assert [p for p in result.problems if p.severity == "error" and p.path != "config.json"] == []
