"""The model families quantjob runs, by name, for admission and the CLI: an unknown model type is
refused before a pod or a rank starts. The names come from the family registry
(``quantjob.families``: one module per family, torch-free).

A model's family is config.json's ``model_type``, or an override written as msModelSlim's
``--model_type`` is (``Qwen2.5-7B-Instruct``), matched by lowercase prefix, the longest first
(``quantjob.families.family_for_name``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantjob.api.problems import Problem
from quantjob.families import family_for_name, model_types, wrapped_text_model

# The output projection every family keeps float (an adapter may name another).
LM_HEAD = "lm_head"

__all__ = ["LM_HEAD", "family_for_name", "model_type_problems"]


def model_type_problems(model_config: Mapping[str, Any] | None, model_type: str | None, *,
                        override_at: str, config_at: str = "config.json") -> list[Problem]:
    """A problem when the override, or else config.json's ``model_type`` (when a config is given),
    names no supported family. ``override_at``: the field or flag the override came from."""
    supported = ", ".join(model_types())
    declared = model_config.get("model_type") if model_config is not None else None
    text_type = wrapped_text_model(declared)
    if text_type is not None:
        return [Problem(config_at, f"model_type {declared!r} holds its {text_type} language "
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
    if declared not in model_types():
        architectures = model_config.get("architectures")
        archs = ", ".join(str(a) for a in architectures) if isinstance(architectures, list) and architectures \
            else "unknown architecture"
        return [Problem(config_at, f"model_type {declared!r} ({archs}) is not supported; "
                                   f"supported model types: {supported}")]
    return []
