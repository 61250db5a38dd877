"""The adapter the worker runs a model with: its family's (``quantjob.families``: one module per family,
registered there), picked by config.json's ``model_type`` or an msModelSlim-style ``--model_type``.

``Adapter`` and the subgraph types are defined in ``quantjob.families.adapter`` (torch-free, so
admission and the CLI read families without torch); the worker's modules import them from here.
"""

from __future__ import annotations

from typing import Any

from quantjob.families import family_for_name, model_types, registered, wrapped_text_model
from quantjob.families.adapter import Adapter, AttentionHeads, Subgraph
from quantjob.worker.errors import QuantJobError

__all__ = ["UNSUPPORTED_SETTINGS", "Adapter", "AttentionHeads", "Subgraph", "adapter_for", "supported_model_types"]


def supported_model_types() -> list[str]:
    return list(model_types())


# config.json settings no family is run with (key -> why, and what to do instead).
UNSUPPORTED_SETTINGS: dict[str, str] = {
    "use_bidirectional_attention": "an embedding model attends both ways; quantjob runs causal language "
                                   "models only: quantize a causal checkpoint of the family",
}


def adapter_for(model_config: dict[str, Any], model_type: str | None = None, *,
                config_file: str = "config.json") -> Adapter:
    """The adapter for a model's ``config.json`` (or an explicit ``--model_type`` override)."""
    declared = model_config.get("model_type")
    text_type = wrapped_text_model(declared)
    if text_type is not None:
        archs = ", ".join(model_config.get("architectures") or []) or "a multimodal model"
        raise QuantJobError(
            f"{config_file}: model_type {declared!r} ({archs}) holds its {text_type} language model inside a "
            "multimodal wrapper (text_config, tensors under language_model); quantjob quantizes text-only "
            f"checkpoints: save the language model as its own {text_type} model directory first "
            "(docs/models.md, 'Multimodal Gemma3 checkpoints'), or start from a text-only checkpoint")
    adapter = _override(model_type) if model_type else _declared(model_config, config_file)
    for key, fix in UNSUPPORTED_SETTINGS.items():
        if model_config.get(key):
            raise QuantJobError(f"{config_file}: {key}: {model_config[key]!r} is not supported; {fix}")
    return adapter


def _override(model_type: str) -> Adapter:
    family = registered(family_for_name(model_type))
    if family is not None:
        return family.adapter
    raise QuantJobError(f"--model_type {model_type!r} is not supported; supported model types: "
                        f"{', '.join(supported_model_types())} (or omit --model_type to use config.json's model_type)")


def _declared(model_config: dict[str, Any], config_file: str) -> Adapter:
    supported = ", ".join(supported_model_types())
    declared = model_config.get("model_type")
    if not declared:
        raise QuantJobError(f"{config_file} has no 'model_type'; add it or pass --model_type (one of: {supported})")
    family = registered(declared)
    if family is None:
        archs = ", ".join(model_config.get("architectures") or []) or "unknown architecture"
        raise QuantJobError(f"{config_file}: model_type {declared!r} ({archs}) is not supported; "
                            f"supported model types: {supported}")
    return family.adapter
