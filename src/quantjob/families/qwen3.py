"""Qwen3 dense models (config.json ``model_type: qwen3``; ``--model_type Qwen3-8B``): a Llama-style
layer with per-head q/k norms, sliding windows as Qwen2 has them. A Qwen3 name with an
active-parameter part (``Qwen3-30B-A3B``) is Qwen3-MoE (``quantjob.families.qwen3_moe``).

msModelSlim's Qwen3 adapter (Ascend/msmodelslim, msmodelslim/model/qwen3/model_adapter.py,
``get_adapter_config_for_subgraph``) lists all four kinds of site: both norm-linear, v -> o and up -> down.
"""

from __future__ import annotations

from quantjob.families.adapter import SUBGRAPH_KINDS, Adapter
from quantjob.families.family import Demo, Family
from quantjob.families.shared import DENSE_LAYOUT, LLAMA_SUBGRAPHS, QK_NORMS, head_dim, upper_layers_slide

FAMILY = Family(
    adapter=Adapter("qwen3", LLAMA_SUBGRAPHS, qk_norms=QK_NORMS, smoothing_kinds=SUBGRAPH_KINDS),
    layout=DENSE_LAYOUT,
    demo=Demo("Qwen3Config", lambda shape: {**head_dim(shape), **upper_layers_slide(shape)}, sliding_window=True),
)
