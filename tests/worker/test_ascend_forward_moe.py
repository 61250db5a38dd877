"""vllm-ascend's W8A8_DYNAMIC MoE arithmetic (``ascend_forward.w8a8_dynamic_moe``) against references.

- per expert, the grouped-matmul path is bit for bit the chain of vllm-ascend's dense W8A8_DYNAMIC
  linears (``w8a8_dynamic_linear``) with a float32 SwiGLU rounded to the model dtype;
- routing: a token goes through its top-k experts only, weighted by its router weight;
- both paths (grouped matmul, fused MC2) stay within the quantization error of a float MoE layer
  computed with the unquantized weights;
- ``dynamic_experts`` takes a saved layer's experts as vllm-ascend's MoE loader does, refusing what
  it would not load.
"""

from __future__ import annotations

import pytest
import torch

from quantjob.worker.errors import QuantJobError
from quantjob.worker.readers.ascend_forward import (
    DynamicExpert,
    SavedLinear,
    dynamic_experts,
    w8a8_dynamic_expert,
    w8a8_dynamic_linear,
    w8a8_dynamic_moe,
)

BF16 = torch.bfloat16
HIDDEN, INTER, EXPERTS, TOP_K, TOKENS = 64, 32, 6, 2, 40


def _quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel int8, the scale in bf16 as the saver stores it."""
    scale = (weight.abs().amax(dim=1, keepdim=True) / 127).to(BF16)
    return (weight / scale.float()).round().clamp(-128, 127).to(torch.int8), scale


def _layer(seed: int = 0) -> tuple[dict[int, DynamicExpert], dict[int, tuple[torch.Tensor, ...]]]:
    generator = torch.Generator().manual_seed(seed)
    experts: dict[int, DynamicExpert] = {}
    floats: dict[int, tuple[torch.Tensor, ...]] = {}
    for e in range(EXPERTS):
        gate, up = (torch.randn(INTER, HIDDEN, generator=generator) / 8 for _ in range(2))
        down = torch.randn(HIDDEN, INTER, generator=generator) / 6
        floats[e] = (gate, up, down)
        experts[e] = DynamicExpert(*_quantize(gate), *_quantize(up), *_quantize(down))
    return experts, floats


def _routing(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(TOKENS, HIDDEN, generator=generator).to(BF16)
    logits = torch.randn(TOKENS, EXPERTS, generator=generator)
    weights, ids = torch.softmax(logits, dim=-1).topk(TOP_K, dim=-1)
    return x, ids, weights / weights.sum(dim=-1, keepdim=True)


def test_an_expert_is_the_chain_of_dense_dynamic_linears() -> None:
    experts, _ = _layer()
    x, _, _ = _routing()
    e = experts[3]
    gate = w8a8_dynamic_linear(x, e.gate_weight, e.gate_scale)
    up = w8a8_dynamic_linear(x, e.up_weight, e.up_scale)
    hidden = (torch.nn.functional.silu(gate.float()) * up.float()).to(BF16)
    expected = w8a8_dynamic_linear(hidden, e.down_weight, e.down_scale)
    assert torch.equal(w8a8_dynamic_expert(x, e), expected)
    assert w8a8_dynamic_expert(x, e).dtype == BF16


def test_each_token_goes_through_its_top_k_experts_only() -> None:
    experts, _ = _layer()
    x, ids, weights = _routing()
    out = w8a8_dynamic_moe(x, ids, weights, experts)
    for token in (0, 7, TOKENS - 1):
        parts = [w8a8_dynamic_expert(x[token:token + 1], experts[int(e)]).float() * weights[token, k].to(BF16).float()
                 for k, e in enumerate(ids[token])]
        assert torch.equal(out[token], torch.stack(parts).sum(dim=0).to(BF16)[0])
    # a token's result does not depend on the others (per-token quantization): alone it is the same
    assert torch.equal(w8a8_dynamic_moe(x[5:6], ids[5:6], weights[5:6], experts), out[5:6])
    # experts nobody is routed to need not be loaded; a routed one that is missing is refused
    used = {int(e) for e in ids[:3].unique()}
    assert torch.equal(w8a8_dynamic_moe(x[:3], ids[:3], weights[:3], {e: experts[e] for e in used}), out[:3])
    missing = next(iter(used))
    with pytest.raises(QuantJobError, match=f"routed to expert {missing}"):
        w8a8_dynamic_moe(x[:3], ids[:3], weights[:3], {e: experts[e] for e in used - {missing}})


@pytest.mark.parametrize("fused", [False, True])
def test_close_to_the_float_layer(fused: bool) -> None:
    experts, floats = _layer()
    x, ids, weights = _routing()
    reference = torch.zeros(TOKENS, HIDDEN)
    xf = x.float()
    for token in range(TOKENS):
        for k, e in enumerate(ids[token].tolist()):
            gate, up, down = floats[e]
            h = torch.nn.functional.silu(xf[token] @ gate.T) * (xf[token] @ up.T)
            reference[token] += weights[token, k] * (h @ down.T)
    out = w8a8_dynamic_moe(x, ids, weights, experts, fused=fused).float()
    relative = (out - reference).norm() / reference.norm()
    assert relative < 0.03, relative        # int8 weights and activations, bf16 rounding
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.999


def test_the_fused_path_differs_from_the_grouped_path_only_by_rounding() -> None:
    experts, _ = _layer()
    x, ids, weights = _routing()
    grouped, fused = (w8a8_dynamic_moe(x, ids, weights, experts, fused=f).float() for f in (False, True))
    assert not torch.equal(grouped, fused)
    assert (grouped - fused).abs().max() < 0.05 * grouped.abs().max()


def _saved(experts: dict[int, DynamicExpert], prefix: str = "model.layers.1.mlp.experts") -> dict[str, SavedLinear]:
    saved: dict[str, SavedLinear] = {}
    for e, expert in experts.items():
        for projection, weight, scale in (("gate_proj", expert.gate_weight, expert.gate_scale),
                                          ("up_proj", expert.up_weight, expert.up_scale),
                                          ("down_proj", expert.down_weight, expert.down_scale)):
            saved[f"{prefix}.{e}.{projection}"] = SavedLinear("W8A8_DYNAMIC", {
                "weight": weight, "weight_scale": scale, "weight_offset": torch.zeros_like(scale)})
    saved["model.layers.1.self_attn.q_proj"] = SavedLinear("W8A8", {})   # not an expert: left alone
    return saved


def test_dynamic_experts_reads_a_saved_layer_as_vllm_ascend_loads_it() -> None:
    experts, _ = _layer()
    read = dynamic_experts(_saved(experts), "model.layers.1.mlp.experts")
    assert sorted(read) == list(range(EXPERTS))
    assert torch.equal(read[4].down_weight, experts[4].down_weight)
    saved = _saved(experts)
    saved["model.layers.1.mlp.experts.2.up_proj"] = SavedLinear("W8A16", saved["model.layers.1.mlp.experts.2.up_proj"]
                                                                .tensors)
    with pytest.raises(QuantJobError, match=r"experts\.2: described \{'up_proj': 'W8A16'\}.*only int8 MoE scheme"):
        dynamic_experts(saved, "model.layers.1.mlp.experts")
    saved = _saved(experts)
    del saved["model.layers.1.mlp.experts.0.down_proj"]
    with pytest.raises(QuantJobError, match=r"experts\.0: down_proj not saved quantized"):
        dynamic_experts(saved, "model.layers.1.mlp.experts")
    saved = _saved(experts)
    saved["model.layers.1.mlp.experts.1.gate_proj"].tensors["weight_scale"] = torch.ones(INTER, 2, dtype=BF16)
    with pytest.raises(QuantJobError, match=r"experts\.1\.gate_proj: W8A8_DYNAMIC needs an int8 weight and a \[32, 1\]"):
        dynamic_experts(saved, "model.layers.1.mlp.experts")
