"""What a model family is to the worker, as data: ``Adapter`` (where an architecture keeps its parts
and how it behaves) and the smoothing sites of its decoder layers (``SubgraphSpec``, resolved per model
as ``Subgraph``; ``SparseLayers`` for Mixture-of-Experts layers).

An adapter names module paths (embedding, decoder layers, final norm, rotary embedding, lm_head),
says how the family behaves where families differ (the embedding scale, whether the rotary
embedding depends on the layer type, the norm convention, the norms of a decoder layer), and lists,
per decoder layer, the smoothing subgraphs (``norm-linear``, ``linear-linear``, ``ov``, ``up-down``)
that the smoothing processors work on. The loop reads these entries; it never branches on the
architecture. Each family's adapter is written in its own module of ``quantjob.families``.

Torch-free at import: the methods that compute on tensors import torch when called (only the worker
calls them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch is imported where it is used: admission and the CLI read adapters without it
    import torch

SubgraphKind = Literal["norm-linear", "linear-linear", "ov", "up-down"]
SUBGRAPH_KINDS: tuple[SubgraphKind, ...] = ("norm-linear", "linear-linear", "ov", "up-down")


@dataclass(frozen=True)
class AttentionHeads:
    """How ``o_proj``'s input channels map onto ``v_proj``'s output channels (grouped-query attention):
    o input channel ``h * head_dim + d`` reads v output channel ``(h // (num_heads // num_kv_heads)) *
    (rows_before + head_dim) + rows_before + d``.

    ``rows_before``: rows of the source linear that precede each head's value rows and are no value
    (MLA: DeepSeek's ``kv_b_proj`` gives per head ``qk_nope_head_dim`` key rows, then ``v_head_dim``
    value rows); a fold leaves them alone. 0 for ``v_proj``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    rows_before: int = 0


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


LAYER_TYPES = ("full_attention", "sliding_attention")


def attention_heads(model_config: Mapping[str, Any]) -> AttentionHeads:
    """Head counts from a (text) ``config.json`` mapping; ``head_dim`` defaults to hidden / heads."""
    heads = int(model_config["num_attention_heads"])
    kv_heads = int(model_config.get("num_key_value_heads") or heads)
    head_dim = model_config.get("head_dim") or int(model_config["hidden_size"]) // heads
    return AttentionHeads(heads, kv_heads, int(head_dim))


ConfigTest = Callable[[Mapping[str, Any], int], bool]


@dataclass(frozen=True)
class SparseLayers:
    """Where a family's Mixture-of-Experts layers are and what they hold.

    ``is_sparse(config, index)``: whether decoder layer ``index`` has a sparse MLP (the others are
    dense and use the adapter's ``subgraph_specs``). ``specs``: the smoothing sites of a sparse layer;
    a source or target holding ``{e}`` stands for one site per routed expert ``e``.
    ``experts``: the experts module (transformers 5 holds it fused: ``gate_up_proj`` ``[E, 2I, H]``,
    ``down_proj`` ``[E, H, I]``; the loop replaces it by one linear per expert and checkpoint name).
    ``router``: the router (its weight and correction bias stay float). ``num_experts_keys``: the
    config keys that may hold the number of routed experts (config.json's name first, then the one
    transformers 5 renames it to)."""

    is_sparse: ConfigTest
    num_experts_keys: tuple[str, ...]
    specs: tuple[SubgraphSpec, ...]
    experts: str = "mlp.experts"
    router: str = "mlp.gate"

    def num_experts(self, model_config: Mapping[str, Any]) -> int:
        for key in self.num_experts_keys:
            if model_config.get(key):
                return int(model_config[key])
        from quantjob.worker.errors import QuantJobError  # the worker's error type; only the worker calls this

        raise QuantJobError(f"config.json: none of {', '.join(self.num_experts_keys)} gives the number of routed "
                            "experts; add it as the model's published config.json has it")


def expand_experts(specs: tuple[SubgraphSpec, ...], num_experts: int) -> list[SubgraphSpec]:
    """``specs`` with every ``{e}`` template written out for experts 0..num_experts-1, in expert order."""
    out: list[SubgraphSpec] = []
    for spec in specs:
        templated = "{e}" in spec.source or any("{e}" in t for t in spec.targets)
        for e in range(num_experts) if templated else (None,):
            out.append(spec if e is None else SubgraphSpec(
                spec.kind, spec.source.replace("{e}", str(e)), tuple(t.replace("{e}", str(e)) for t in spec.targets)))
    return out


@dataclass(frozen=True)
class Adapter:
    """Where an architecture keeps its parts and how they behave. Paths are relative to the CausalLM model;
    norm and subgraph paths are relative to one decoder layer.

    ``embed_scale``: the embedding lookup is multiplied by ``embed_scale(config)`` rounded to the
    embedding's dtype (Gemma: ``sqrt(hidden_size)``); None for a plain lookup.
    ``rotary_per_layer_type``: the rotary embedding takes the layer type (``full_attention`` or
    ``sliding_attention``) and gives each its own frequencies (Gemma3: local and global rope bases).
    ``norm_offset``: the layer norms multiply by ``norm_offset + weight`` (0 for Llama-style norms,
    1 for Gemma's), so a smoothing fold of ``1/s`` writes ``(norm_offset + w) / s - norm_offset``.
    ``subgraph_specs``: the smoothing sites of every decoder layer, in the order they are processed;
    their ``norm-linear`` sources are the layer's input norms.
    ``qk_norms``: per-head norms on the query and key projections' outputs (Qwen3, Gemma3): q_proj
    and k_proj output channels are not free to rescale.
    ``output_norms``: norms on a block's output before the residual add (Gemma3's post-attention and
    post-feed-forward norms): they follow o_proj / down_proj and feed no linear.
    ``norm_bias``: vllm-ascend's norm for this family adds a saved ``<norm>.bias`` (its RMSNorm does;
    its GemmaRMSNorm does not), so asymmetric smoothing may write one.
    ``other_norms``: norms of a layer that no smoothing site folds into (DeepSeek's
    ``post_attention_layernorm`` feeds the router and the experts; ``kv_a_layernorm``).
    ``heads``: the head layout of the ``ov`` sites, from config.json.
    ``sparse``: the family's Mixture-of-Experts layers (None: every layer is dense).
    ``float_any_dtype``: tensors (paths relative to a layer) that may be stored in another float
    dtype than the model's (a router kept in float32, as transformers keeps it).
    ``extra_layers_key``: config.json's count of layers stored after the decoder layers under the
    same prefix (DeepSeek's multi-token-prediction layers, ``model.layers.{num_hidden_layers}.*``):
    the loop does not run them; they are copied to the output as they are (float).
    ``smoothing_kinds``: the subgraph kinds msModelSlim smooths for this family, the sites a smoothing
    entry works on by default (``enable_subgraph_type`` selects among them; the entry's
    ``ext.sites: all`` selects every kind of ``subgraph_specs``). A family without a smoothing adapter
    of its own in msModelSlim falls back to its default adapter, which auto-detects norm-linear pairs
    only (msmodelslim/processor/anti_outlier/default/model_adapter.py, used by
    ``BaseSmoothProcessor.preprocess`` when the model adapter lacks IterSmoothInterface /
    FlexSmoothQuantInterface); Qwen3's adapter lists all four kinds
    (msmodelslim/model/qwen3/model_adapter.py, ``get_adapter_config_for_subgraph``).
    """

    name: str
    subgraph_specs: tuple[SubgraphSpec, ...]
    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    rotary: str = "model.rotary_emb"
    lm_head: str = "lm_head"
    norm_offset: float = 0.0
    embed_scale: Callable[[Any], float] | None = None
    rotary_per_layer_type: bool = False
    qk_norms: tuple[str, ...] = field(default=())
    output_norms: tuple[str, ...] = field(default=())
    norm_bias: bool = True
    other_norms: tuple[str, ...] = field(default=())
    heads: Callable[[Mapping[str, Any]], AttentionHeads] = attention_heads
    sparse: SparseLayers | None = None
    float_any_dtype: tuple[str, ...] = field(default=())
    extra_layers_key: str | None = None
    smoothing_kinds: tuple[SubgraphKind, ...] = ("norm-linear",)

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers}.{index}."

    @property
    def input_norms(self) -> tuple[str, ...]:
        """The norms whose output feeds linears (the ``norm-linear`` sources of dense and sparse
        layers), in layer order."""
        specs = self.subgraph_specs + (self.sparse.specs if self.sparse is not None else ())
        return tuple(dict.fromkeys(spec.source for spec in specs if spec.kind == "norm-linear"))

    @property
    def norms(self) -> tuple[str, ...]:
        """Every norm of a decoder layer; all of them multiply by ``norm_offset + weight``."""
        return self.input_norms + self.output_norms + self.qk_norms + self.other_norms

    def is_sparse(self, model_config: Mapping[str, Any], index: int) -> bool:
        """Whether decoder layer ``index`` holds routed experts."""
        return self.sparse is not None and self.sparse.is_sparse(model_config, index)

    def layer_specs(self, model_config: Mapping[str, Any], index: int = 0) -> list[SubgraphSpec]:
        """The smoothing sites of decoder layer ``index`` (expert templates written out)."""
        if self.sparse is not None and self.sparse.is_sparse(model_config, index):
            return expand_experts(self.sparse.specs, self.sparse.num_experts(model_config))
        return list(self.subgraph_specs)

    def subgraphs(self, model_config: Mapping[str, Any], index: int = 0) -> list[Subgraph]:
        """The smoothing sites of decoder layer ``index`` of this model (``ov`` ones carry head counts)."""
        heads = self.heads(model_config)
        return [Subgraph(spec.kind, spec.source, spec.targets, heads if spec.kind == "ov" else None)
                for spec in self.layer_specs(model_config, index)]

    def extra_layers(self, model_config: Mapping[str, Any]) -> int:
        """How many layers the checkpoint stores after the decoder layers (MTP layers), per config.json."""
        if self.extra_layers_key is None:
            return 0
        return int(model_config.get(self.extra_layers_key) or 0)

    def folded_norm_weight(self, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm weight that divides the norm's output by ``scale`` (float32 math, weight's dtype).

        A multiplier ``norm_offset + w`` that is not zero never rounds to zero: with ``norm_offset``
        1 a large scale takes ``(1 + w) / s - 1`` next to -1, where the dtype's step is coarse, and
        a zero would cut the channel off. It keeps the smallest multiplier of its sign instead.
        """
        import torch

        offset = self.norm_offset
        target = (weight.float() + offset) / scale.float()
        folded = (target - offset).to(weight.dtype)
        dead = ((folded.float() + offset) == 0) & (target != 0)
        if bool(dead.any()):
            edge = torch.full_like(folded, -offset)
            toward = torch.where(target > 0, torch.full_like(folded, float("inf")),
                                 torch.full_like(folded, float("-inf")))
            folded = torch.where(dead, torch.nextafter(edge, toward), folded)
        return folded

    def applied_norm_scale(self, weight: torch.Tensor, folded: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The scale a fold really applied, ``(offset + w) / (offset + w')`` per channel (float32), from
        the weight before and after ``folded_norm_weight`` (``scale`` where the multiplier is zero).

        The folded weight is rounded to its dtype; scaling the consumers by the applied scale rather
        than the requested one keeps the subgraph's function to the consumers' own rounding, which is
        relative. Near -1 (Gemma's ``1 + w`` norms under a large scale) the requested scale would be
        off by several percent.
        """
        import torch

        before = weight.float() + self.norm_offset
        after = folded.float() + self.norm_offset
        exact = (before != 0) & (after != 0)
        return torch.where(exact, before / torch.where(exact, after, torch.ones_like(after)), scale.float())

    def embed_tokens(self, ids: torch.Tensor, table: torch.Tensor, config: Any) -> torch.Tensor:
        """The embedding of ``ids`` with this family's arithmetic: a lookup in ``table``, times the
        scale as a float32 scalar rounded to the table's dtype (what transformers multiplies by)."""
        import torch

        hidden = torch.nn.functional.embedding(ids, table)
        if self.embed_scale is None:
            return hidden
        return hidden * torch.tensor(self.embed_scale(config), dtype=torch.float32).to(table.dtype)

    def position_embeddings(self, rotary: torch.nn.Module, probe: torch.Tensor, positions: torch.Tensor,
                            layer_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for ``positions`` from the model's rotary module, for a layer of ``layer_type``."""
        if self.rotary_per_layer_type:
            return rotary(probe, positions, layer_type)
        return rotary(probe, positions)
