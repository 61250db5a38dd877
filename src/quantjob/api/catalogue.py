"""The algorithm catalogue: every processor, observer method and saver quantjob knows by name.

The compatibility rules (``quantjob.api.check``) read only this table. An implemented processor's
entry is not written here: its registration with its config class adds it
(``quantjob.api.processor_registry``); an observer or saver is one entry here. Names msModelSlim has and quantjob does not run are listed with
``implemented=False`` so that the error says "known, not supported yet" instead of "unknown".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["processor", "observer", "saver"]


@dataclass(frozen=True)
class Algorithm:
    """One named algorithm.

    ``implemented``: quantjob runs it. ``distributed``: it may run under ``dp_layer_wise``
    (its statistics reduce across ranks to the single-device result).
    ``distributed_variant``: for savers, the name it is converted to under ``dp_layer_wise``.
    ``scopes``: for observers, the scopes it supports (empty = all).
    ``format``: for savers, the output format the worker writes (registered in ``quantjob.formats``);
    a saver without one is not implemented.
    """

    name: str
    kind: Kind
    summary: str
    implemented: bool = True
    distributed: bool = False
    aliases: tuple[str, ...] = ()
    distributed_variant: str | None = None
    scopes: tuple[str, ...] = ()
    format: str | None = None


_ENTRIES: list[Algorithm] = [
    # --- processors ----------------------------------------------------------------------
    # The implemented ones are registered with their config classes (``add_processor``, called by
    # ``quantjob.api.processor_registry.processor`` in ``quantjob.api.modelslim``) and come first.
    # msModelSlim processors that quantjob does not implement yet: known names, clear errors.
    Algorithm("smooth_quant", "processor", "SmoothQuant", implemented=False),
    Algorithm("awq", "processor", "activation-aware weight quantization", implemented=False),
    Algorithm("flex_awq_ssz", "processor", "flexible AWQ with SSZ", implemented=False),
    Algorithm("quarot", "processor", "rotation-based outlier removal", implemented=False),
    Algorithm("adapt_rotation", "processor", "learned rotation (prior stage)", implemented=False),
    Algorithm("kv_smooth", "processor", "KV-cache smoothing", implemented=False),
    Algorithm("kv_quant", "processor", "KV-cache quantization", implemented=False),
    Algorithm("gptq", "processor", "GPTQ", implemented=False),
    Algorithm("autoround", "processor", "AutoRound", implemented=False),
    Algorithm("fa3_quant", "processor", "FlashAttention-3 quantization", implemented=False),
    Algorithm("adapter_smooth", "processor", "adapter smoothing", implemented=False),
    Algorithm("float_sparse", "processor", "floating-point sparsity", implemented=False),
    # --- observer methods (qconfig.*.method) ---------------------------------------------
    Algorithm("minmax", "observer", "running min/max", distributed=True),
    Algorithm("ssz", "observer", "iterative least-squares search of per-channel weight scales (symmetric)",
              distributed=True, scopes=("per_channel",)),
    Algorithm("autoround", "observer", "AutoRound rounding", implemented=False),
    Algorithm("gptq", "observer", "GPTQ", implemented=False),
    Algorithm("histogram", "observer", "histogram (KL / percentile)", implemented=False),
    # --- savers ----------------------------------------------------------------------------
    Algorithm("ascendv1_saver", "saver", "msModelSlim ascendv1 layout (vllm-ascend)",
              distributed_variant="distributed_ascendv1_saver", format="ascendv1"),
    Algorithm("distributed_ascendv1_saver", "saver", "ascendv1 layout written by several ranks",
              distributed=True, format="ascendv1"),
    Algorithm("compressed_tensors_saver", "saver", "compressed-tensors layout (vLLM, transformers on GPUs and CPUs)",
              distributed_variant="distributed_compressed_tensors_saver", format="compressed_tensors"),
    Algorithm("distributed_compressed_tensors_saver", "saver", "compressed-tensors layout written by several ranks",
              distributed=True, format="compressed_tensors"),
    Algorithm("mindie_format_saver", "saver", "MindIE format", implemented=False),
]


def _index(kind: Kind) -> dict[str, Algorithm]:
    table: dict[str, Algorithm] = {}
    for entry in _ENTRIES:
        if entry.kind != kind:
            continue
        for name in (entry.name, *entry.aliases):
            table[name] = entry
    return table


PROCESSORS: dict[str, Algorithm] = _index("processor")
OBSERVERS: dict[str, Algorithm] = _index("observer")
SAVERS: dict[str, Algorithm] = _index("saver")
_TABLES: dict[Kind, dict[str, Algorithm]] = {"processor": PROCESSORS, "observer": OBSERVERS, "saver": SAVERS}


_registered_processors = 0


def add_processor(entry: Algorithm) -> None:
    """Add a registered processor's entry (after the registered ones, before the known-only ones)."""
    global _registered_processors
    _ENTRIES.insert(_registered_processors, entry)
    _registered_processors += 1
    for name in (entry.name, *entry.aliases):
        PROCESSORS[name] = entry


def remove_processor(entry: Algorithm) -> None:
    """Take a registered processor's entry back (tests that register a fake processor)."""
    global _registered_processors
    _ENTRIES.remove(entry)
    _registered_processors -= 1
    for name in (entry.name, *entry.aliases):
        PROCESSORS.pop(name, None)


def _registered() -> None:
    """Make sure the processor registrations (in ``quantjob.api.modelslim``) have run."""
    import quantjob.api.modelslim  # noqa: F401  (registers the processors on import)


def lookup(kind: Kind, name: str) -> Algorithm | None:
    """The entry for ``name`` (or one of its aliases), or None when the name is unknown."""
    _registered()
    return _TABLES[kind].get(name) if isinstance(name, str) else None


def canonical_name(kind: Kind, name: str) -> str:
    """The canonical name of an algorithm given its name or alias (the input when unknown)."""
    entry = lookup(kind, name)
    return entry.name if entry else name


def entries(kind: Kind) -> list[Algorithm]:
    """Every entry of one kind, in catalogue order."""
    _registered()
    return [e for e in _ENTRIES if e.kind == kind]


def names(kind: Kind) -> list[str]:
    """Every canonical name of one kind (implemented or not), sorted."""
    _registered()
    return sorted({e.name for e in _ENTRIES if e.kind == kind})


def runs_distributed(entry: Algorithm) -> bool:
    """Whether an implemented entry can be used under dp_layer_wise (itself or via its variant)."""
    if not entry.implemented:
        return False
    if entry.distributed:
        return True
    variant = lookup(entry.kind, entry.distributed_variant) if entry.distributed_variant else None
    return bool(variant and variant.implemented and variant.distributed)


def supported(kind: Kind, *, distributed: bool = False) -> list[str]:
    """Canonical names quantjob can run, optionally only those usable under dp_layer_wise."""
    _registered()
    return sorted({e.name for e in _ENTRIES
                   if e.kind == kind and e.implemented and (not distributed or runs_distributed(e))})
