"""Qwen3-MoE (config.json ``model_type: qwen3_moe``; Qwen3-30B-A3B, Qwen3-235B-A22B,
Qwen3-Coder-480B-A35B): Qwen3's attention, routed experts in the layers transformers' Qwen3MoeDecoderLayer
gives them, top-k with ``norm_topk_prob``, no shared experts. Qwen3's MoE models are named by their
active parameters: a Qwen3 name with an ``-a<N>b`` part is this family.

Smoothing sites as msModelSlim's Qwen3-MoE adapter has them (Ascend/msmodelslim,
msmodelslim/model/qwen3_moe/model_adapter.py, ``get_adapter_config_for_subgraph``): input_layernorm ->
q/k/v, v -> o, and every routed expert's up -> down (no post_attention_layernorm site: the router reads
it too). Dense layers (``mlp_only_layers``) keep Qwen3's dense sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantjob.families import qwen3
from quantjob.families.adapter import SUBGRAPH_KINDS, Adapter, SparseLayers
from quantjob.families.family import Demo, DemoShape, Family, LayerLayout, NameRule
from quantjob.families.shared import (
    DENSE_LAYOUT,
    EXPERT_UP_DOWN,
    EXPERTS0,
    LLAMA_SUBGRAPHS,
    QK_NORMS,
    QKV_OV,
    head_dim,
    moe_settings,
)

MOE_ACTIVE_PARAMS = r"-a\d+(\.\d+)?b"


def is_sparse(config: Mapping[str, Any], index: int) -> bool:
    """transformers' Qwen3MoeDecoderLayer: not in ``mlp_only_layers``, experts configured, and
    ``(index + 1) % decoder_sparse_step == 0``."""
    experts = config.get("num_experts") or config.get("num_local_experts") or 0
    step = int(config.get("decoder_sparse_step") or 1)
    return index not in (config.get("mlp_only_layers") or []) and experts > 0 and (index + 1) % step == 0


def _demo(shape: DemoShape) -> dict[str, Any]:
    """Layer 0 dense (``mlp_only_layers``), the others sparse."""
    assert shape.experts is not None, "a MoE family's demo shape has its experts"
    return {**head_dim(shape), **moe_settings(shape), "num_experts": shape.experts[0], "decoder_sparse_step": 1,
            "mlp_only_layers": [0]}


FAMILY = Family(
    adapter=Adapter("qwen3_moe", LLAMA_SUBGRAPHS, qk_norms=QK_NORMS, smoothing_kinds=SUBGRAPH_KINDS,
                    sparse=SparseLayers(is_sparse, ("num_experts", "num_local_experts"), (*QKV_OV, EXPERT_UP_DOWN))),
    layout=LayerLayout(DENSE_LAYOUT.layers, (*DENSE_LAYOUT.fused, EXPERTS0)),
    demo=Demo("Qwen3MoeConfig", _demo),
    names=("qwen3-moe",),
    name_rules=(NameRule(qwen3.FAMILY.model_type, MOE_ACTIVE_PARAMS),),  # a Qwen3 name with "-a<N>b"
)
