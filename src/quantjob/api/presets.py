"""Quant-type presets (``--quant_type`` / ``spec.quantType``) expanded to modelslim_v1 configs."""

from __future__ import annotations

import copy
from typing import Any

from quantjob.api.modelslim import ModelslimConfig

_WEIGHT_INT8 = {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}

_QCONFIGS: dict[str, dict[str, Any]] = {
    # the seed's config: static per-tensor asymmetric activations, per-channel symmetric weights
    "w8a8": {"act": {"scope": "per_tensor", "dtype": "int8", "symmetric": False, "method": "minmax"},
             "weight": _WEIGHT_INT8},
    # msModelSlim's default for LLMs (lab_practice/default/default-w8a8.yaml): per-token dynamic
    # symmetric activations, after iter_smooth (_SMOOTHING)
    "w8a8_dynamic": {"act": {"scope": "per_token", "dtype": "int8", "symmetric": True, "method": "minmax"},
                     "weight": _WEIGHT_INT8},
    "w8a16": {"weight": _WEIGHT_INT8},
    "w4a16": {"weight": {"scope": "per_group", "dtype": "int4", "symmetric": True, "method": "minmax",
                         "ext": {"group_size": 128}}},
}

# Processors that run before linear_quant. msModelSlim's own fallback recipe for its w8a8 quant type
# (a W8A8_DYNAMIC model) smooths with iter_smooth at its defaults first; without it per-token int8
# activations cost Gemma3-270M +2.30% perplexity, with it +1.06% (bench/README, issue 10).
_SMOOTHING: dict[str, list[dict[str, Any]]] = {"w8a8_dynamic": [{"type": "iter_smooth", "include": ["*"]}]}

# vllm-ascend loads no dense W4A16 linear (quantjob.api.rules_output): w4a16 is written for vLLM/transformers.
_SAVERS: dict[str, str] = {"w4a16": "compressed_tensors_saver"}

QUANT_TYPES: tuple[str, ...] = tuple(_QCONFIGS)

# one line per preset, for help texts
SUMMARIES: dict[str, str] = {
    "w8a8": "int8 weights, static per-tensor int8 activations",
    "w8a8_dynamic": "iter_smooth, then int8 weights and per-token dynamic int8 activations",
    "w8a16": "int8 weights per channel",
    "w4a16": "int4 weights per group of 128, saved as compressed-tensors",
}


def preset_dict(quant_type: str) -> dict[str, Any]:
    """The modelslim_v1 document (as plain data) for a quant type; ValueError names the choices."""
    key = quant_type.lower()
    if key not in _QCONFIGS:
        raise ValueError(f"unknown quant type {quant_type!r}; choose one of: {', '.join(QUANT_TYPES)}")
    return {
        "apiversion": "modelslim_v1",
        "metadata": {"config_id": f"quantjob-preset-{key}"},
        "spec": {
            "runner": "auto",
            "process": [*copy.deepcopy(_SMOOTHING.get(key, [])),
                        {"type": "linear_quant", "qconfig": copy.deepcopy(_QCONFIGS[key]), "include": ["*"]}],
            "save": [{"type": _SAVERS.get(key, "ascendv1_saver")}],
        },
    }


def preset(quant_type: str) -> ModelslimConfig:
    return ModelslimConfig.model_validate(preset_dict(quant_type))
