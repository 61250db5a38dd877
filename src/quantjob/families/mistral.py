"""Mistral (config.json ``model_type: mistral``): a Llama-style layer with sliding-window attention in
every layer (``sliding_window`` in config.json).

msModelSlim has no Mistral adapter with smoothing sites of its own: its default adapter applies
(Ascend/msmodelslim, msmodelslim/processor/anti_outlier/default/model_adapter.py): ``norm-linear``
sites by default.
"""

from __future__ import annotations

from quantjob.families.adapter import Adapter
from quantjob.families.family import Demo, Family
from quantjob.families.shared import DENSE_LAYOUT, LLAMA_SUBGRAPHS

FAMILY = Family(
    adapter=Adapter("mistral", LLAMA_SUBGRAPHS),
    layout=DENSE_LAYOUT,
    demo=Demo("MistralConfig", lambda shape: {"sliding_window": shape.sliding_window}, sliding_window=True),
)
