"""Gemma3 text models (config.json ``model_type: gemma3_text``; ``--model_type gemma-3-270m``).

Where Gemma3 differs from Llama: norms multiply by ``1 + weight``; the embedding is scaled by
``sqrt(hidden_size)`` rounded to its dtype; layers alternate sliding-window and global attention,
each type with its own rotary frequencies; q/k norms; ``post_attention_layernorm`` normalises the
attention output before the residual add, so the MLP reads ``pre_feedforward_layernorm`` (and
``post_feedforward_layernorm`` follows ``down_proj``); vllm-ascend's GemmaRMSNorm adds no saved bias.
A multimodal Gemma3 checkpoint (``model_type: gemma3``) holds this language model inside a wrapper:
refused, with the conversion ``docs/models.md`` gives. Gemma 3n (``gemma-3n-E4B``) is another
architecture and is refused by name.

msModelSlim has no Gemma adapter with smoothing sites of its own: its default adapter applies
(Ascend/msmodelslim, msmodelslim/processor/anti_outlier/default/model_adapter.py): the two
norm -> linear sites by default.
"""

from __future__ import annotations

from typing import Any

from quantjob.families.adapter import Adapter, SubgraphSpec
from quantjob.families.family import Demo, DemoShape, Family
from quantjob.families.shared import ATTN, DENSE_LAYOUT, MLP_IN, QK_NORMS, head_dim

SUBGRAPHS: tuple[SubgraphSpec, ...] = (
    SubgraphSpec("norm-linear", "input_layernorm", ATTN),
    SubgraphSpec("ov", "self_attn.v_proj", ("self_attn.o_proj",)),
    SubgraphSpec("norm-linear", "pre_feedforward_layernorm", MLP_IN),
    SubgraphSpec("up-down", "mlp.up_proj", ("mlp.down_proj",)),
)
# Gemma3 always has sliding-window layers: the demo's window is shorter than most calibration
# samples, so the window really cuts attention (the shipped samples run from 8 to 64 words).
DEMO_WINDOW = 16


def sqrt_hidden_size(config: Any) -> float:
    """Gemma's embedding multiplier: ``hidden_size ** 0.5``, as transformers computes it."""
    return float(config.hidden_size ** 0.5)


def _demo(shape: DemoShape) -> dict[str, Any]:
    """Sliding and global layers alternate, starting with a sliding one."""
    return {**head_dim(shape), "sliding_window": shape.sliding_window or DEMO_WINDOW,
            "query_pre_attn_scalar": shape.hidden_size // shape.num_heads,
            "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(shape.num_layers)]}


FAMILY = Family(
    adapter=Adapter("gemma3_text", SUBGRAPHS, norm_offset=1.0, embed_scale=sqrt_hidden_size,
                    rotary_per_layer_type=True, qk_norms=QK_NORMS,
                    output_norms=("post_attention_layernorm", "post_feedforward_layernorm"), norm_bias=False),
    layout=DENSE_LAYOUT,
    demo=Demo("Gemma3TextConfig", _demo, sliding_window=True),
    names=("gemma3", "gemma-3"),
    other_architectures=("gemma3n", "gemma-3n"),
    wrappers=("gemma3",),
)
