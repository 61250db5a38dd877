"""Routed experts as linears: the module the loop runs in place of transformers' fused experts.

transformers 5 holds a MoE layer's routed experts as two 3-D parameters (``gate_up_proj``
``[E, 2I, H]``, gate rows first, and ``down_proj`` ``[E, H, I]``); checkpoints store them per expert
(``mlp.experts.{e}.gate_proj.weight`` ...). ``ExpertLinears`` holds one ``gate_proj`` / ``up_proj``
/ ``down_proj`` linear per expert under those names, so hooks observe each expert, processors smooth
and quantize it like any linear, and the records and the saver use the checkpoint's names.

Its forward is transformers' eager experts forward (``Qwen3MoeExperts`` / ``DeepseekV3Experts`` /
``Glm4MoeExperts``, which share it) with the fused gate/up product split in two: the experts a token
is routed to, in ascending expert order, each on its routed tokens only, weighted by the router's
weights and added with ``index_add_``. The router (``mlp.gate``: top-k, ``norm_topk_prob``,
DeepSeek's grouped top-k with ``e_score_correction_bias`` and ``routed_scaling_factor``) and the
shared experts stay transformers' own modules and run unchanged.

``all_tokens``: after the routed computation, every token also goes through every expert, for
statistics only (llm-compressor's ``calibrate_all_experts``); the output is the routed one, bit for
bit, and an expert that no calibration token is routed to still gets activation statistics. The
loop sets it during observation passes only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from quantjob.worker.errors import QuantJobError
from quantjob.worker.group.distributed import ProcessGroup


class ExpertMLP(torch.nn.Module):
    """One routed expert: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, intermediate: int, act_fn: torch.nn.Module) -> None:
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = torch.nn.Linear(intermediate, hidden, bias=False)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ExpertLinears(torch.nn.Module):
    """The routed experts of one MoE layer, children ``"0"`` .. ``"E-1"`` (see the module docstring).

    ``routed``: while not None, the number of tokens routed to each expert is added to it (int64
    ``[E]``) on every forward."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, act_fn: torch.nn.Module) -> None:
        super().__init__()
        self.num_experts = num_experts
        for e in range(num_experts):
            self.add_module(str(e), ExpertMLP(hidden, intermediate, act_fn))
        self.all_tokens = False
        self.routed: torch.Tensor | None = None

    def expert(self, index: int) -> ExpertMLP:
        module = self.get_submodule(str(index))
        assert isinstance(module, ExpertMLP)
        return module

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            # [E + 1, top_k, tokens]: as transformers builds it (index E: a masked slot, never an expert)
            mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            per_expert = mask[:self.num_experts].sum(dim=(-1, -2))
        if self.routed is not None:
            self.routed += per_expert.to(self.routed.device)
        hit = [int(e) for e in torch.greater(per_expert, 0).nonzero().flatten()]
        for e in hit:
            top_k_pos, token_idx = torch.where(mask[e])
            out = self.expert(e)(hidden_states[token_idx]) * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        if self.all_tokens:  # statistics only: the output above is the routed one, bit for bit
            for e in range(self.num_experts):
                self.expert(e)(hidden_states)
        return final


def fused_experts_to_linears(layer: torch.nn.Module, path: str) -> ExpertLinears:
    """Replace the fused experts module at ``path`` of a (meta) decoder layer by ``ExpertLinears``
    of the same sizes; returns the new module."""
    fused = layer.get_submodule(path)
    if isinstance(fused, ExpertLinears):
        return fused
    gate_up = getattr(fused, "gate_up_proj", None)
    down = getattr(fused, "down_proj", None)
    if isinstance(fused, torch.nn.ModuleList):  # a model's own code (trust_remote_code) with its own MoE forward
        raise QuantJobError(f"{path}: {type(fused).__name__} holds the experts as the model's own Python code lays "
                            "them out; quantjob runs transformers' modeling of this family (its routing is what "
                            "the tests check): run without --trust_remote_code, with config.json's model_type "
                            "set to the family (e.g. deepseek_v3 for Kimi-K2)")
    if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor) or gate_up.dim() != 3:
        raise QuantJobError(f"{path}: {type(fused).__name__} is not the fused experts module quantjob knows "
                            "(gate_up_proj [E, 2I, H], down_proj [E, H, I]); this transformers version lays the "
                            "experts out differently: use the transformers version quantjob pins")
    act_fn = getattr(fused, "act_fn", None)
    if not isinstance(act_fn, torch.nn.Module):
        raise QuantJobError(f"{path}: {type(fused).__name__} has no activation module (act_fn); quantjob runs "
                            "experts with one")
    experts, double, hidden = gate_up.shape
    if getattr(fused, "has_bias", False) or getattr(fused, "is_transposed", False) \
            or tuple(down.shape) != (experts, hidden, double // 2):
        raise QuantJobError(f"{path}: {type(fused).__name__} has biases or a transposed layout; quantjob runs "
                            "experts laid out as gate_up_proj [E, 2I, H] and down_proj [E, H, I] only")
    with torch.device(gate_up.device):
        module = ExpertLinears(experts, hidden, double // 2, act_fn)
    parent, _, name = path.rpartition(".")
    layer.get_submodule(parent).register_module(name, module) if parent else layer.register_module(name, module)
    return module


def expert_modules(layer: torch.nn.Module) -> dict[str, ExpertLinears]:
    """Relative path -> every ``ExpertLinears`` of a decoder layer."""
    return {name: module for name, module in layer.named_modules() if isinstance(module, ExpertLinears)}


@contextmanager
def count_routed(layer: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Tokens routed to each expert while the block runs: relative experts path -> int64 ``[E]``."""
    modules = expert_modules(layer)
    counts = {name: torch.zeros(module.num_experts, dtype=torch.int64) for name, module in modules.items()}
    for name, module in modules.items():
        module.routed = counts[name]
    try:
        yield counts
    finally:
        for module in modules.values():
            module.routed = None


def set_all_tokens(layer: torch.nn.Module, enabled: bool) -> None:
    """Route every token through every expert of the layer for statistics (see ``ExpertLinears``)."""
    for module in expert_modules(layer).values():
        module.all_tokens = enabled


def reduce_counts(counts: dict[str, torch.Tensor], group: ProcessGroup) -> dict[str, list[int]]:
    """Every rank's routed-token counts summed (integers: exact in any order), the same on every rank."""
    total: dict[str, list[int]] = {name: [0] * int(value.numel()) for name, value in counts.items()}
    for part in group.all_gather_object({name: [int(v) for v in value.tolist()] for name, value in counts.items()}):
        for name, values in part.items():
            total[name] = [a + b for a, b in zip(total[name], values, strict=True)]
    return total
