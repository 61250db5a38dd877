"""DeepSeek-V3 (config.json ``model_type: deepseek_v3``; DeepSeek-V3, V3.1, R1, and Kimi-K2, which has the
same architecture): multi-head latent attention, dense layers before ``first_k_dense_replace``, then
routed experts with grouped top-k and ``e_score_correction_bias`` and shared experts; the router stays
float (its weight may be stored float32); ``num_nextn_predict_layers`` multi-token-prediction layers
stored after the decoder layers are copied as they are.

Smoothing sites as msModelSlim's DeepSeek-V3 adapter has them (Ascend/msmodelslim,
msmodelslim/model/deepseek_v3/model_adapter.py, ``get_adapter_config_for_subgraph``): input_layernorm ->
q_a_proj + kv_a_proj_with_mqa, q_a_layernorm -> q_b_proj, kv_b_proj -> o_proj (its ``ov`` site with
fusion ``kv``), up -> down of the dense MLP, of the shared experts and of every routed expert; no
smoothing of post_attention_layernorm (the router reads it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantjob.families.adapter import SUBGRAPH_KINDS, Adapter, AttentionHeads, SparseLayers, SubgraphSpec
from quantjob.families.family import Demo, DemoShape, Family, LayerLayout
from quantjob.families.shared import (
    EXPERT_UP_DOWN,
    EXPERTS0,
    ROUTER_FLOAT,
    SHARED_EXPERTS,
    after_first_k_dense,
    first_k_dense_settings,
    moe_settings,
)

MLA: tuple[SubgraphSpec, ...] = (
    SubgraphSpec("norm-linear", "input_layernorm", ("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa")),
    SubgraphSpec("norm-linear", "self_attn.q_a_layernorm", ("self_attn.q_b_proj",)),
    SubgraphSpec("ov", "self_attn.kv_b_proj", ("self_attn.o_proj",)),
)


def latent_attention_heads(model_config: Mapping[str, Any]) -> AttentionHeads:
    """Multi-head latent attention (DeepSeek-V3): ``kv_b_proj`` -> ``o_proj``. Every head has its own
    ``qk_nope_head_dim`` key rows and ``v_head_dim`` value rows in ``kv_b_proj``; ``o_proj`` reads
    the value rows, head by head (msModelSlim's deepseek_v3 adapter: its ``ov`` site with fusion
    ``kv``, ``qk_nope_head_dim`` and ``v_head_dim``)."""
    heads = int(model_config["num_attention_heads"])
    return AttentionHeads(heads, heads, int(model_config["v_head_dim"]), int(model_config["qk_nope_head_dim"]))


def _demo(shape: DemoShape) -> dict[str, Any]:
    """Grouped top-k (4 groups, 2 kept), latent attention at a quarter and half of the hidden size,
    one key/value head per head; the demo adds one multi-token-prediction layer."""
    head = shape.hidden_size // shape.num_heads
    return {**moe_settings(shape), **first_k_dense_settings(shape), "n_group": 4, "topk_group": 2,
            "q_lora_rank": shape.hidden_size // 2, "kv_lora_rank": shape.hidden_size // 4,
            "qk_nope_head_dim": head, "qk_rope_head_dim": head // 2, "v_head_dim": head,
            "num_key_value_heads": shape.num_heads}


FAMILY = Family(
    adapter=Adapter(
        "deepseek_v3", (*MLA, SubgraphSpec("up-down", "mlp.up_proj", ("mlp.down_proj",))),
        smoothing_kinds=SUBGRAPH_KINDS, other_norms=("self_attn.kv_a_layernorm", "post_attention_layernorm"),
        heads=latent_attention_heads,
        sparse=SparseLayers(after_first_k_dense, ("n_routed_experts", "num_local_experts"), (
            *MLA, SubgraphSpec("up-down", "mlp.shared_experts.up_proj", ("mlp.shared_experts.down_proj",)),
            EXPERT_UP_DOWN)),
        float_any_dtype=ROUTER_FLOAT, extra_layers_key="num_nextn_predict_layers"),
    layout=LayerLayout("model.layers", (
        ("self_attn.fused_qkv_a_proj", ("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa")),
        ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")), SHARED_EXPERTS, EXPERTS0)),
    demo=Demo("DeepseekV3Config", _demo, mtp_layer=True),
    names=("deepseek-v3", "deepseek-r1", "kimi-k2"),
)
