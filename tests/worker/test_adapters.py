"""Adapters: one declarative entry per family; its names exist in the real decoder layers, and its
behaviour (norm convention, embedding scale) is the one transformers computes."""

from __future__ import annotations

import pytest
import torch
import transformers

from quantjob.families import families, family_named
from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.adapters import adapter_for, supported_model_types
from quantjob.worker.model.demo import demo_config, family_names


@pytest.mark.parametrize("family", family_names())
def test_adapter_names_exist_in_the_model(family: str) -> None:
    config = demo_config(family, num_layers=1)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    adapter = adapter_for(config.to_dict())
    assert adapter.name == family
    for path in (adapter.embed, adapter.final_norm, adapter.rotary, adapter.lm_head):
        model.get_submodule(path)
    layer = model.get_submodule(adapter.layers)[0]
    for subgraph in adapter.subgraphs(config.to_dict()):
        source = layer.get_submodule(subgraph.source)
        assert isinstance(source, torch.nn.Linear) == (subgraph.kind != "norm-linear")
        assert all(isinstance(layer.get_submodule(name), torch.nn.Linear) for name in subgraph.targets)
        if subgraph.kind == "ov":
            assert subgraph.heads is not None
            assert source.out_features == subgraph.heads.num_kv_heads * (
                subgraph.heads.rows_before + subgraph.heads.head_dim)
            assert layer.get_submodule(subgraph.targets[0]).in_features == \
                subgraph.heads.num_heads * subgraph.heads.head_dim
    norms = {name for name, module in layer.named_modules() if type(module).__name__.endswith("RMSNorm")}
    assert set(adapter.norms) == norms and len(adapter.norms) == len(norms)  # every norm, each once
    assert set(adapter.input_norms) | set(adapter.output_norms) | set(adapter.qk_norms) | set(adapter.other_norms) \
        == norms


@pytest.mark.parametrize("family", family_names())
def test_folded_norm_weight_divides_every_norm_by_the_scale(family: str) -> None:
    """The norm convention (weight or 1 + weight) is the one the family's norm modules compute."""
    config = demo_config(family, num_layers=1)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    adapter = adapter_for(config.to_dict())
    generator = torch.Generator().manual_seed(0)
    for name in adapter.norms:
        norm = model.get_submodule(adapter.layer_prefix(0) + name)
        width = norm.weight.shape[0]
        x = torch.randn(3, width, generator=generator)
        scale = torch.exp(torch.randn(width, generator=generator))
        with torch.no_grad():
            norm.weight.copy_(0.3 * torch.randn(width, generator=generator))
            before = norm(x)
            norm.weight.copy_(adapter.folded_norm_weight(norm.weight, scale))
            after = norm(x)
        assert torch.allclose(after * scale, before, rtol=1e-5, atol=1e-6), f"{family}: {name}"


@pytest.mark.parametrize("family", family_names())
def test_embedding_is_the_models_own(family: str) -> None:
    """Lookup, then (Gemma) the sqrt(hidden) scale rounded to the weight dtype: bit for bit."""
    config = demo_config(family, num_layers=1, hidden_size=80)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(torch.bfloat16)
    adapter = adapter_for(config.to_dict())
    embedding = model.get_submodule(adapter.embed)
    ids = torch.arange(0, config.vocab_size, 7).unsqueeze(0)
    got = adapter.embed_tokens(ids, embedding.weight.detach(), config)
    assert torch.equal(got, embedding(ids))
    assert (adapter.embed_scale is None) == (family != "gemma3_text")


@pytest.mark.parametrize("hidden", [640, 1152, 2560, 3840, 5376])  # Gemma3 270M, 1B, 4B, 12B, 27B
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemma3_embedding_scale_at_real_sizes(hidden: int, dtype: torch.dtype) -> None:
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextScaledWordEmbedding

    module = Gemma3TextScaledWordEmbedding(16, hidden, 0, embed_scale=hidden ** 0.5).to(dtype)
    config = transformers.Gemma3TextConfig(hidden_size=hidden, num_attention_heads=4, head_dim=hidden // 4)
    ids = torch.arange(16).unsqueeze(0)
    got = family_named("gemma3_text").adapter.embed_tokens(ids, module.weight.detach(), config)
    assert torch.equal(got, module(ids))


def test_unsupported_architecture_lists_supported() -> None:
    with pytest.raises(QuantJobError) as info:
        adapter_for({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, config_file="/m/config.json")
    message = str(info.value)
    assert "/m/config.json" in message and "gpt2" in message and "GPT2LMHeadModel" in message
    assert all(name in message for name in supported_model_types())


def test_model_type_override_by_msmodelslim_name() -> None:
    assert adapter_for({"model_type": "llama"}, "Qwen2.5-7B-Instruct") is family_named("qwen2").adapter
    assert adapter_for({}, "Qwen3-8B") is family_named("qwen3").adapter
    with pytest.raises(QuantJobError, match="--model_type 'Mixtral-8x7B'"):
        adapter_for({"model_type": "llama"}, "Mixtral-8x7B")


def test_gemma3_names_and_settings() -> None:
    for name in ("Gemma3-1B", "gemma-3-270m", "gemma3-1b-it"):
        assert adapter_for({}, name) is family_named("gemma3_text").adapter
    with pytest.raises(QuantJobError, match="--model_type 'gemma3n-E4B' is not supported"):
        adapter_for({}, "gemma3n-E4B")  # another architecture with the same prefix
    with pytest.raises(QuantJobError, match=r"/m/config.json: use_bidirectional_attention: True is not supported"):
        adapter_for({"model_type": "gemma3_text", "use_bidirectional_attention": True}, config_file="/m/config.json")


def test_missing_model_type() -> None:
    with pytest.raises(QuantJobError, match="no 'model_type'"):
        adapter_for({})


def test_admission_knows_exactly_the_families_with_an_adapter() -> None:
    """``quantjob.api.model_types`` (no torch) refuses model types at admission: it accepts every
    registered family, by config.json's model type and as a ``--model_type``, and the worker runs it."""
    from quantjob.api.model_types import LM_HEAD, family_for_name, model_type_problems

    assert supported_model_types() == sorted(family.model_type for family in families())
    for family in families():
        assert family_for_name(family.model_type) == family.model_type
        assert model_type_problems({"model_type": family.model_type}, None, override_at="spec.model.type") == []
        assert model_type_problems(None, family.model_type, override_at="spec.model.type") == []
        assert adapter_for({"model_type": family.model_type}) is family.adapter
    assert model_type_problems({"model_type": "gpt2"}, None, override_at="spec.model.type")
    assert {family.adapter.lm_head for family in families()} == {LM_HEAD}


def test_gemma_fold_never_cuts_a_channel_and_reports_the_scale_it_applied() -> None:
    """(1 + w) / s - 1 for a large s lies next to -1, where bf16's step is 2^-8: the folded multiplier
    must not round to zero, and the applied scale (what the consumers get) is the one stored."""
    adapter = family_named("gemma3_text").adapter
    weight = torch.tensor([0.0, 0.5, -0.25, 2.0], dtype=torch.bfloat16)
    scale = torch.tensor([1000.0, 3.0, 40.0, 1.0])
    folded = adapter.folded_norm_weight(weight, scale)
    multiplier = folded.float() + 1
    assert bool((multiplier > 0).all())
    applied = adapter.applied_norm_scale(weight, folded, scale)
    assert torch.allclose(multiplier * applied, weight.float() + 1, rtol=1e-6)
    # the requested scale is off by more than bf16's relative step where (1 + w) / s is small
    assert (applied / scale - 1).abs().max() > 2.0 ** -8


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "glm4_moe"])
def test_sparse_layer_sites_name_per_expert_linears(family: str) -> None:
    """Layer 0 of the demo MoE models is dense, layer 1 sparse: its sites (experts written out, as
    msModelSlim's adapters list them) name linears of the skeleton the loop runs."""
    from quantjob.worker.model.demo import DEMO_EXPERTS
    from quantjob.worker.model.experts import fused_experts_to_linears

    config = demo_config(family, num_layers=2)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    adapter = adapter_for(config.to_dict())
    settings = config.to_dict()
    assert not adapter.is_sparse(settings, 0) and adapter.is_sparse(settings, 1)
    layer = model.get_submodule(adapter.layers)[1]
    fused_experts_to_linears(layer, "mlp.experts")
    sites = adapter.subgraphs(settings, 1)
    for site in sites:
        assert all(isinstance(layer.get_submodule(name), torch.nn.Linear) for name in site.targets)
    expert_sites = [s for s in sites if s.source.startswith("mlp.experts.")]
    assert [s.source for s in expert_sites] == (
        [] if family == "glm4_moe" else [f"mlp.experts.{e}.up_proj" for e in range(DEMO_EXPERTS)])
    assert not any("post_attention_layernorm" == s.source for s in sites)  # the router reads it too
    assert not isinstance(layer.get_submodule("mlp.gate"), torch.nn.Linear)  # the router is never a linear


def test_moe_names_resolve_to_moe_families() -> None:
    for name, family in (("Qwen3-30B-A3B", "qwen3_moe"), ("Qwen3-235B-A22B-Instruct-2507", "qwen3_moe"),
                         ("Qwen3-8B", "qwen3"), ("DeepSeek-V3", "deepseek_v3"), ("DeepSeek-R1", "deepseek_v3"),
                         ("GLM-4.5-Air", "glm4_moe")):
        assert adapter_for({}, name).name == family, name


@pytest.mark.parametrize(("family", "settings"), [
    ("qwen3_moe", {"decoder_sparse_step": 2, "mlp_only_layers": [3]}),
    ("qwen3_moe", {"decoder_sparse_step": 1, "mlp_only_layers": [0, 2]}),
    ("deepseek_v3", {"first_k_dense_replace": 2}),
    ("glm4_moe", {"first_k_dense_replace": 0}),
])
def test_sparse_layers_are_those_transformers_builds(family: str, settings: dict[str, object]) -> None:
    """``Adapter.is_sparse`` picks the layers transformers gives experts, for every layout setting."""
    config = demo_config(family, num_layers=6)
    for key, value in settings.items():
        setattr(config, key, value)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    adapter = adapter_for(config.to_dict())
    built = [hasattr(layer.mlp, "experts") for layer in model.get_submodule(adapter.layers)]
    assert [adapter.is_sparse(config.to_dict(), i) for i in range(6)] == built
    assert any(built) and (family == "glm4_moe" or not all(built))
