"""Model adapters: where each supported architecture keeps its parts, as declarative entries.

An adapter names module paths (embedding, decoder layers, final norm, rotary embedding, lm_head),
says how the family behaves where families differ (the norm convention), and lists, per decoder
layer, the smoothing subgraphs (``norm-linear``, ``linear-linear``, ``ov``, ``up-down``) that the
smoothing processors work on. The loop reads these entries; it never branches on the architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from quantjob.worker.errors import QuantJobError

_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP_IN = ("mlp.gate_proj", "mlp.up_proj")

SubgraphKind = Literal["norm-linear", "linear-linear", "ov", "up-down"]
SUBGRAPH_KINDS: tuple[SubgraphKind, ...] = ("norm-linear", "linear-linear", "ov", "up-down")


@dataclass(frozen=True)
class AttentionHeads:
    """How ``o_proj``'s input channels map onto ``v_proj``'s output channels (grouped-query attention):
    o input channel ``h * head_dim + d`` reads v output channel ``(h // (num_heads // num_kv_heads)) *
    head_dim + d``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class SubgraphSpec:
    """One smoothing site of a decoder layer, as data: ``source`` (a norm for ``norm-linear``, else a
    linear) produces the activations that every linear in ``targets`` reads as its input. Paths are
    relative to the decoder layer (``input_layernorm``, ``self_attn.q_proj``)."""

    kind: SubgraphKind
    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Subgraph(SubgraphSpec):
    """A ``SubgraphSpec`` resolved for one model: ``heads`` is set for ``ov`` subgraphs."""

    heads: AttentionHeads | None = None


_LLAMA_SUBGRAPHS: tuple[SubgraphSpec, ...] = (
    SubgraphSpec("norm-linear", "input_layernorm", _ATTN),
    SubgraphSpec("ov", "self_attn.v_proj", ("self_attn.o_proj",)),
    SubgraphSpec("norm-linear", "post_attention_layernorm", _MLP_IN),
    SubgraphSpec("up-down", "mlp.up_proj", ("mlp.down_proj",)),
)


def attention_heads(model_config: Mapping[str, Any]) -> AttentionHeads:
    """Head counts from a (text) ``config.json`` mapping; ``head_dim`` defaults to hidden / heads."""
    heads = int(model_config["num_attention_heads"])
    kv_heads = int(model_config.get("num_key_value_heads") or heads)
    head_dim = model_config.get("head_dim") or int(model_config["hidden_size"]) // heads
    return AttentionHeads(heads, kv_heads, int(head_dim))


@dataclass(frozen=True)
class Adapter:
    """Where an architecture keeps its parts and how they behave. Paths are relative to the CausalLM model.

    ``norm_offset``: the layer norms multiply by ``norm_offset + weight`` (0 for Llama-style norms,
    1 for Gemma's), so a smoothing fold of ``1/s`` writes ``(norm_offset + w) / s - norm_offset``.
    ``subgraph_specs``: the smoothing sites of every decoder layer, in the order they are processed.
    ``norm_bias``: vllm-ascend's norm for this family adds a saved ``<norm>.bias`` (its RMSNorm does;
    its GemmaRMSNorm does not), so asymmetric smoothing may write one.
    """

    name: str
    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    rotary: str = "model.rotary_emb"
    lm_head: str = "lm_head"
    subgraph_specs: tuple[SubgraphSpec, ...] = _LLAMA_SUBGRAPHS
    norm_offset: float = 0.0
    extra_norms: tuple[str, ...] = field(default=())  # norms inside attention (q/k norms)
    norm_bias: bool = True

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers}.{index}."

    def subgraphs(self, model_config: Mapping[str, Any]) -> list[Subgraph]:
        """The smoothing sites of one decoder layer of this model (``ov`` ones carry head counts)."""
        heads = attention_heads(model_config)
        return [Subgraph(spec.kind, spec.source, spec.targets, heads if spec.kind == "ov" else None)
                for spec in self.subgraph_specs]

    def folded_norm_weight(self, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm weight that divides the norm's output by ``scale`` (float32 math, weight's dtype)."""
        w = weight.float()
        return ((w + self.norm_offset) / scale.float() - self.norm_offset).to(weight.dtype)


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
