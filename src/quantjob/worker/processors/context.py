"""What a processor sees. ``LayerContext``, what its ``apply`` sees of one decoder layer: the
materialised layer, its linears, the reduced activation statistics (and probe rows, when a processor
asked for them), the smoothing subgraphs of the model, the rank group, and the records produced so
far. Processors never load or move tensors; they reach the other ranks only through ``group`` (exact
reductions). ``Preflight``, what its ``check`` sees before any compute: checkpoint headers, the
whole config and the model's adapter (so a rule may look at the processors around its own entry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from quantjob.api.modelslim import ModelslimConfig
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.observers import ActivationStats, Probes
from quantjob.worker.loop.records import QuantizedLinear
from quantjob.worker.model.adapters import Adapter, Subgraph


def _no_reobserve() -> None:
    raise RuntimeError("this LayerContext was built without a way to observe the layer again")


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
    group: ProcessGroup = field(default_factory=ProcessGroup)
    subgraphs: list[Subgraph] = field(default_factory=list)  # the model's smoothing sites (relative paths)
    num_samples: int = 0                           # calibration samples over all ranks
    config: ModelslimConfig | None = None          # the whole run's config (what later entries will do)
    # this rank's probe rows: linear -> global sample -> input rows (see observers.record_probes);
    # filled only when a registered processor of the run asks for "probes" (processor_registry)
    probes: Probes = field(default_factory=dict)
    # the probe rows' count per sample (``observers.record_probes``); None: every row was kept
    probes_per_sample: int | None = 0
    # runs this rank's samples through the layer as it is now and replaces ``stats`` (reduced
    # again over all ranks) and ``probes``, then clears ``modified``; collective: every rank calls it
    reobserve: Callable[[], None] = _no_reobserve

    def module(self, relative: str) -> torch.nn.Module:
        """A module of this layer by its path relative to the layer (``self_attn.v_proj``)."""
        return self.layer.get_submodule(relative)

    def full_name(self, relative: str) -> str:
        return self.prefix + relative


@dataclass(frozen=True)
class Preflight:
    shapes: dict[str, tuple[int, ...]]   # module name -> weight shape, every 2-D weight of the decoder layers
    config: ModelslimConfig
    adapter: Adapter
    tensor_names: frozenset[str]         # every tensor of the checkpoint
