"""Tables several family modules share: the Llama-style decoder layer (its smoothing sites and the
linears vLLM packs), and the pieces of the Mixture-of-Experts families (an expert's up -> down site,
the packed experts, the layers after ``first_k_dense_replace``, the demo's expert settings)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantjob.families.adapter import SubgraphSpec
from quantjob.families.family import DemoShape, LayerLayout

ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_IN = ("mlp.gate_proj", "mlp.up_proj")
QK_NORMS = ("self_attn.q_norm", "self_attn.k_norm")

# A Llama-style decoder layer: input_layernorm -> q/k/v, v -> o, post_attention_layernorm -> gate/up, up -> down.
LLAMA_SUBGRAPHS: tuple[SubgraphSpec, ...] = (
    SubgraphSpec("norm-linear", "input_layernorm", ATTN),
    SubgraphSpec("ov", "self_attn.v_proj", ("self_attn.o_proj",)),
    SubgraphSpec("norm-linear", "post_attention_layernorm", MLP_IN),
    SubgraphSpec("up-down", "mlp.up_proj", ("mlp.down_proj",)),
)

DENSE_LAYOUT = LayerLayout(
    layers="model.layers",
    # vLLM's LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM packed_modules_mapping
    fused=(("self_attn.qkv_proj", ATTN), ("mlp.gate_up_proj", MLP_IN)),
)

# --- Mixture-of-Experts families ------------------------------------------------------------------
# Smoothing sites as msModelSlim's adapters have them (Ascend/msmodelslim, msmodelslim/model/<family>/
# model_adapter.py, get_adapter_config_for_subgraph; each family module says which). Dense layers of
# a MoE family keep the dense sites of their own MLP. These tables hold msModelSlim's sites only, so
# each MoE family's smoothing_kinds offers every kind they hold.

EXPERT_UP_DOWN = SubgraphSpec("up-down", "mlp.experts.{e}.up_proj", ("mlp.experts.{e}.down_proj",))
QKV_OV: tuple[SubgraphSpec, ...] = (
    SubgraphSpec("norm-linear", "input_layernorm", ATTN),
    SubgraphSpec("ov", "self_attn.v_proj", ("self_attn.o_proj",)),
)
ROUTER_FLOAT = ("mlp.gate.weight", "mlp.gate.e_score_correction_bias")

# vllm-ascend's packed_modules_model_mapping (vllm_ascend/quantization/modelslim_config.py: qwen3_moe,
# deepseek_v3, glm4_moe): the shared experts' gate/up are packed like a dense MLP's, and a layer's
# routed experts are one module whose scheme is read from expert 0's gate/up/down (the same entry for
# every expert is the output rules' business, not a shard rule here).
EXPERTS0 = ("mlp.experts", ("mlp.experts.0.gate_proj", "mlp.experts.0.up_proj", "mlp.experts.0.down_proj"))
SHARED_EXPERTS = ("mlp.shared_experts.gate_up_proj", ("mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj"))


def after_first_k_dense(config: Mapping[str, Any], index: int) -> bool:
    """DeepSeek-V3 / GLM-4.5: the first ``first_k_dense_replace`` layers are dense."""
    return index >= int(config.get("first_k_dense_replace") or 0)


# --- demo settings ------------------------------------------------------------------------------


def upper_layers_slide(shape: DemoShape) -> dict[str, Any]:
    """Qwen2/Qwen3 demo models with a window slide in the upper half of their layers."""
    if shape.sliding_window is None:
        return {}
    return {"use_sliding_window": True, "sliding_window": shape.sliding_window,
            "max_window_layers": shape.num_layers // 2}


def head_dim(shape: DemoShape) -> dict[str, Any]:
    """An explicit ``head_dim`` (hidden / heads), for the families whose config has one."""
    return {"head_dim": shape.hidden_size // shape.num_heads}


def moe_settings(shape: DemoShape) -> dict[str, Any]:
    """The experts of a demo MoE model: ``shape.experts``' experts per token, each expert a quarter
    of the MLP's width, normalised top-k weights."""
    assert shape.experts is not None, "a MoE family's demo shape has its experts"
    _, per_token, _ = shape.experts
    return {"num_experts_per_tok": per_token, "moe_intermediate_size": shape.intermediate_size // 4,
            "norm_topk_prob": True}


def first_k_dense_settings(shape: DemoShape) -> dict[str, Any]:
    """DeepSeek-V3 / GLM-4.5 demo models: layer 0 dense, shared experts, routed scaling, and no
    multi-token-prediction layer in config.json (the demo adds DeepSeek's after writing the model)."""
    assert shape.experts is not None, "a MoE family's demo shape has its experts"
    routed, _, shared = shape.experts
    return {"n_routed_experts": routed, "first_k_dense_replace": 1, "n_shared_experts": shared,
            "routed_scaling_factor": 2.5, "num_nextn_predict_layers": 0}
