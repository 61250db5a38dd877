"""Llama (config.json ``model_type: llama``; Llama 2 and 3): the Llama-style decoder layer the other
dense families start from.

msModelSlim has no Llama adapter with smoothing sites of its own: its smoothing processors fall back to
the default adapter (Ascend/msmodelslim, msmodelslim/processor/anti_outlier/default/model_adapter.py,
used by ``BaseSmoothProcessor.preprocess``), which finds norm -> linear pairs only; so by default the
family smooths ``norm-linear`` sites (``ext.sites: all`` selects the others).
"""

from __future__ import annotations

from quantjob.families.adapter import Adapter
from quantjob.families.family import Demo, Family
from quantjob.families.shared import DENSE_LAYOUT, LLAMA_SUBGRAPHS

FAMILY = Family(
    adapter=Adapter("llama", LLAMA_SUBGRAPHS),
    layout=DENSE_LAYOUT,
    demo=Demo("LlamaConfig", lambda shape: {}),
    # DeepSeek's R1 distillation onto Llama 3 (its config.json says llama; longer than "deepseek-r1").
    names=("deepseek-r1-distill-llama",),
)
