"""GLM-4.5 / 4.6 / 4.7 (config.json ``model_type: glm4_moe``): grouped-query attention with biases,
dense layers before ``first_k_dense_replace``, then routed experts (sigmoid scores with
``e_score_correction_bias``) and shared experts; the router stays float; multi-token-prediction layers
stored after the decoder layers are copied as they are.

Smoothing sites as msModelSlim's GLM4-MoE adapter has them (Ascend/msmodelslim,
msmodelslim/model/glm4_moe/model_adapter.py, ``get_adapter_config_for_subgraph``): input_layernorm ->
q/k/v and v -> o only, in dense and sparse layers alike.
"""

from __future__ import annotations

from typing import Any

from quantjob.families.adapter import SUBGRAPH_KINDS, Adapter, SparseLayers
from quantjob.families.family import Demo, DemoShape, Family, LayerLayout
from quantjob.families.shared import (
    DENSE_LAYOUT,
    EXPERTS0,
    QKV_OV,
    ROUTER_FLOAT,
    SHARED_EXPERTS,
    after_first_k_dense,
    first_k_dense_settings,
    head_dim,
    moe_settings,
)


def _demo(shape: DemoShape) -> dict[str, Any]:
    """One expert group; attention biases."""
    return {**head_dim(shape), **moe_settings(shape), **first_k_dense_settings(shape), "n_group": 1,
            "topk_group": 1, "attention_bias": True}


FAMILY = Family(
    adapter=Adapter(
        "glm4_moe", QKV_OV, smoothing_kinds=SUBGRAPH_KINDS, other_norms=("post_attention_layernorm",),
        sparse=SparseLayers(after_first_k_dense, ("n_routed_experts", "num_local_experts"), QKV_OV),
        float_any_dtype=ROUTER_FLOAT, extra_layers_key="num_nextn_predict_layers"),
    layout=LayerLayout(DENSE_LAYOUT.layers, (*DENSE_LAYOUT.fused, SHARED_EXPERTS, EXPERTS0)),
    demo=Demo("Glm4MoeConfig", _demo, random_biases=True),
    names=("glm-4.5", "glm-4.6", "glm-4.7"),
)
