"""What a processor's ``check`` sees before any compute: checkpoint headers, the whole config and
the model's adapter (so a rule may look at the processors around its own entry)."""

from __future__ import annotations

from dataclasses import dataclass

from quantjob.api.modelslim import ModelslimConfig
from quantjob.worker.model.adapters import Adapter


@dataclass(frozen=True)
class Preflight:
    shapes: dict[str, tuple[int, ...]]   # module name -> weight shape, every 2-D weight of the decoder layers
    config: ModelslimConfig
    adapter: Adapter
    tensor_names: frozenset[str]         # every tensor of the checkpoint
