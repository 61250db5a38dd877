"""The model families quantjob has an adapter for, by name only (the adapters themselves live in
``quantjob.worker.model.adapters``, which reads its name tables from here), so admission and the CLI
refuse an unknown model type before a pod or a rank starts.

A model's family is config.json's ``model_type``, or an override written as msModelSlim's
``--model_type`` is (``Qwen2.5-7B-Instruct``), matched by lowercase prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from quantjob.api.problems import Problem

# config.json ``model_type`` values with an adapter (``quantjob.worker.model.adapters.ADAPTERS``).
MODEL_TYPES: tuple[str, ...] = ("deepseek_v3", "gemma3_text", "glm4_moe", "llama", "mistral", "qwen2", "qwen3",
                                "qwen3_moe")
# model_types whose language model sits inside a multimodal wrapper -> the text model_type to save it as.
WRAPPED_TEXT_MODELS: dict[str, str] = {"gemma3": "gemma3_text"}
# msModelSlim-style --model_type names (e.g. "Qwen2.5-7B-Instruct") -> adapter, by lowercase prefix
# (first match wins; None: a different architecture that shares the prefix). Qwen3's MoE models are
# named by their active parameters (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-480B-A35B): a name of
# the qwen3 family with an "-a<N>b" part is qwen3_moe. Kimi-K2 has DeepSeek-V3's architecture.
MOE_ACTIVE_PARAMS = r"-a\d+(\.\d+)?b"
NAME_PREFIXES: tuple[tuple[str, str | None], ...] = (
    ("qwen3-moe", "qwen3_moe"), ("qwen3_moe", "qwen3_moe"), ("deepseek-v3", "deepseek_v3"),
    ("deepseek_v3", "deepseek_v3"), ("deepseek-r1", "deepseek_v3"), ("kimi-k2", "deepseek_v3"),
    ("glm-4.5", "glm4_moe"), ("glm-4.6", "glm4_moe"), ("glm-4.7", "glm4_moe"), ("glm4_moe", "glm4_moe"),
    ("qwen3", "qwen3"), ("qwen2", "qwen2"), ("llama", "llama"), ("mistral", "mistral"),
    ("gemma3n", None), ("gemma-3n", None), ("gemma3", "gemma3_text"), ("gemma-3", "gemma3_text"))
# The output projection every family keeps float (an adapter may name another).
LM_HEAD = "lm_head"


def family_for_name(name: str) -> str | None:
    """The family of an override such as ``Qwen2.5-7B`` or ``Qwen3-30B-A3B``, or None when no
    supported one matches."""
    lowered = name.strip().lower()
    family = next((family for prefix, family in NAME_PREFIXES if lowered.startswith(prefix)), None)
    if family == "qwen3" and re.search(MOE_ACTIVE_PARAMS, lowered):
        return "qwen3_moe"
    return family


def model_type_problems(model_config: Mapping[str, Any] | None, model_type: str | None, *,
                        override_at: str, config_at: str = "config.json") -> list[Problem]:
    """A problem when the override, or else config.json's ``model_type`` (when a config is given),
    names no supported family. ``override_at``: the field or flag the override came from."""
    supported = ", ".join(MODEL_TYPES)
    declared = model_config.get("model_type") if model_config is not None else None
    if isinstance(declared, str) and declared in WRAPPED_TEXT_MODELS:
        return [Problem(config_at, f"model_type {declared!r} holds its {WRAPPED_TEXT_MODELS[declared]} language "
                                   "model inside a multimodal wrapper; save the language model as its own model "
                                   "directory first (docs/models.md), or start from a text-only checkpoint")]
    if model_type:
        if family_for_name(model_type) is None:
            return [Problem(override_at, f"model type {model_type!r} is not supported; use a name starting with one "
                                         f"of: {supported} (or leave it out to use config.json's model_type)")]
        return []
    if model_config is None:
        return []
    if not isinstance(declared, str) or not declared:
        return [Problem(config_at, f"config.json has no 'model_type'; add it or set {override_at} "
                                   f"(one of: {supported})")]
    if declared not in MODEL_TYPES:
        architectures = model_config.get("architectures")
        archs = ", ".join(str(a) for a in architectures) if isinstance(architectures, list) and architectures \
            else "unknown architecture"
        return [Problem(config_at, f"model_type {declared!r} ({archs}) is not supported; "
                                   f"supported model types: {supported}")]
    return []
