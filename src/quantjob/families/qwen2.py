"""Qwen2 and Qwen2.5 (config.json ``model_type: qwen2``; ``--model_type Qwen2.5-7B-Instruct``): a
Llama-style layer with biases on q/k/v (kept as float tensors; the records carry them), sliding windows
in the layers from ``max_window_layers`` on when ``use_sliding_window`` is set.

msModelSlim's Qwen2 adapter (Ascend/msmodelslim, msmodelslim/model/qwen2/model_adapter.py) implements
neither IterSmoothInterface nor FlexSmoothQuantInterface, so its smoothing processors use the default
adapter (msmodelslim/processor/anti_outlier/default/model_adapter.py): ``norm-linear`` sites by default.
"""

from __future__ import annotations

from quantjob.families.adapter import Adapter
from quantjob.families.family import Demo, Family
from quantjob.families.shared import DENSE_LAYOUT, LLAMA_SUBGRAPHS, upper_layers_slide

FAMILY = Family(
    adapter=Adapter("qwen2", LLAMA_SUBGRAPHS),
    layout=DENSE_LAYOUT,
    demo=Demo("Qwen2Config", upper_layers_slide, sliding_window=True, random_biases=True),
    # Qwen2-architecture checkpoints published under other names (their config.json says qwen2):
    # QwQ-32B and DeepSeek's R1 distillations onto Qwen2.5 (longer than deepseek_v3's "deepseek-r1").
    names=("qwq", "deepseek-r1-distill-qwen"),
)
