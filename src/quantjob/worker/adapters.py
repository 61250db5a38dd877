"""Model adapters: where each supported architecture keeps its parts, as declarative entries.

An adapter names module paths (embedding, decoder layers, final norm, rotary embedding, lm_head)
and, per decoder layer, the (norm -> linears) and (linear -> linear) pairs that smoothing
processors work on. The loop reads these entries; it never branches on the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantjob.worker.errors import QuantJobError

_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP_IN = ("mlp.gate_proj", "mlp.up_proj")


@dataclass(frozen=True)
class Adapter:
    """Where an architecture keeps its parts. Paths are relative to the CausalLM model."""

    name: str
    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    rotary: str = "model.rotary_emb"
    lm_head: str = "lm_head"
    # within a decoder layer: (norm, the linears it feeds) and (linear, the linear it feeds)
    norm_linears: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("input_layernorm", _ATTN), ("post_attention_layernorm", _MLP_IN))
    linear_linears: tuple[tuple[str, str], ...] = (
        ("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj"))
    extra_norms: tuple[str, ...] = field(default=())  # norms inside attention (q/k norms)

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers}.{index}."


ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter("llama"),
    "mistral": Adapter("mistral"),
    "qwen2": Adapter("qwen2"),  # attention biases: kept as float tensors / record biases
    "qwen3": Adapter("qwen3", extra_norms=("self_attn.q_norm", "self_attn.k_norm")),
}

# msModelSlim-style --model_type names (e.g. "Qwen2.5-7B-Instruct") -> adapter, by lowercase prefix.
_NAME_PREFIXES: tuple[tuple[str, str], ...] = (
    ("qwen3", "qwen3"), ("qwen2", "qwen2"), ("llama", "llama"), ("mistral", "mistral"))


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model_config: dict[str, Any], model_type: str | None = None, *,
                config_file: str = "config.json") -> Adapter:
    """The adapter for a model's ``config.json`` (or an explicit ``--model_type`` override)."""
    supported = ", ".join(supported_model_types())
    if model_type:
        lowered = model_type.strip().lower()
        for prefix, key in _NAME_PREFIXES:
            if lowered.startswith(prefix):
                return ADAPTERS[key]
        raise QuantJobError(f"--model_type {model_type!r} is not supported; supported model types: {supported} "
                            "(or omit --model_type to use config.json's model_type)")
    declared = model_config.get("model_type")
    if not declared:
        raise QuantJobError(f"{config_file} has no 'model_type'; add it or pass --model_type (one of: {supported})")
    if declared not in ADAPTERS:
        archs = ", ".join(model_config.get("architectures") or []) or "unknown architecture"
        raise QuantJobError(f"{config_file}: model_type {declared!r} ({archs}) is not supported; "
                            f"supported model types: {supported}")
    return ADAPTERS[declared]
