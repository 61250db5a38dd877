"""What a processor sees of one decoder layer: the materialised layer, its linears, the reduced
activation statistics, and the records produced so far. Processors never load or move tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from quantjob.worker.adapters import Adapter
from quantjob.worker.observers import ActivationStats
from quantjob.worker.records import QuantizedLinear


@dataclass
class LayerContext:
    index: int
    prefix: str                                    # "model.layers.3."
    layer: torch.nn.Module
    linears: dict[str, torch.nn.Linear]            # full module name -> linear, forward order
    adapter: Adapter
    stats: dict[str, ActivationStats] = field(default_factory=dict)  # reduced over all ranks
    records: dict[str, QuantizedLinear] = field(default_factory=dict)
    modified: bool = False                         # float weights changed since stats were taken
