"""Which smoothing sites a smoothing entry works on: by default msModelSlim's for the family, the
wider set only through the entry's ``ext.sites: all``."""

from __future__ import annotations

import pytest
import torch

from quantjob.api.modelslim import FlexSmoothQuant, IterSmooth
from quantjob.families import family_named, model_types
from quantjob.worker.processors.context import LayerContext
from quantjob.worker.processors.smoothing_sites import selected_sites

ALL_KINDS = ["norm-linear", "linear-linear", "ov", "up-down"]
_LLAMA_NORMS = {
    ("norm-linear", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("norm-linear", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
}
# Written from msModelSlim (Ascend/msmodelslim):
# - llama, mistral, qwen2 and gemma3 have no adapter implementing IterSmoothInterface /
#   FlexSmoothQuantInterface (msmodelslim/model/qwen2/model_adapter.py; no llama, mistral or gemma
#   adapter at all), so BaseSmoothProcessor.preprocess (processor/anti_outlier/smooth_base.py) uses
#   processor/anti_outlier/default/model_adapter.py: every norm (a class named *LayerNorm/*RMSNorm)
#   whose output feeds linears, as norm-linear, and nothing else. Gemma3's post_attention_layernorm
#   feeds the residual add, not a linear; its MLP reads pre_feedforward_layernorm.
# - qwen3: msmodelslim/model/qwen3/model_adapter.py, get_adapter_config_for_subgraph: two
#   norm-linear, ov (v_proj -> o_proj, group_method max) and up-down (up_proj -> down_proj).
MSMODELSLIM_SITES: dict[str, set[tuple[str, str, tuple[str, ...]]]] = {
    "llama": _LLAMA_NORMS,
    "mistral": _LLAMA_NORMS,
    "qwen2": _LLAMA_NORMS,
    "gemma3_text": {
        ("norm-linear", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("norm-linear", "pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    },
    "qwen3": _LLAMA_NORMS | {
        ("ov", "self_attn.v_proj", ("self_attn.o_proj",)),
        ("up-down", "mlp.up_proj", ("mlp.down_proj",)),
    },
}
CONFIG = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}


def context(family: str) -> LayerContext:
    adapter = family_named(family).adapter
    return LayerContext(index=0, prefix="model.layers.0.", layer=torch.nn.Module(), linears={}, adapter=adapter,
                        subgraphs=adapter.subgraphs(CONFIG))


def sites(ctx: LayerContext, kinds: list[str], which: str) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(site.kind, site.source, site.targets) for site in selected_sites(ctx, kinds, ["*"], [], which)}


def test_the_table_names_families_that_exist() -> None:
    assert set(MSMODELSLIM_SITES) <= set(model_types())


@pytest.mark.parametrize("family", sorted(MSMODELSLIM_SITES))
def test_default_sites_are_msmodelslims_for_the_family(family: str) -> None:
    ctx = context(family)
    default = IterSmooth().ext.sites
    assert default == FlexSmoothQuant().ext.sites == "family"
    assert sites(ctx, ALL_KINDS, default) == MSMODELSLIM_SITES[family]


@pytest.mark.parametrize("family", sorted(MSMODELSLIM_SITES))
def test_enable_subgraph_type_selects_among_what_the_family_offers(family: str) -> None:
    ctx = context(family)
    for kind in ALL_KINDS:
        expected = {site for site in MSMODELSLIM_SITES[family] if site[0] == kind}
        assert sites(ctx, [kind], "family") == expected


@pytest.mark.parametrize("family", sorted(MSMODELSLIM_SITES))
def test_the_wider_set_only_through_ext_sites_all(family: str) -> None:
    ctx = context(family)
    every = {(spec.kind, spec.source, spec.targets) for spec in family_named(family).adapter.subgraph_specs}
    entry = IterSmooth.model_validate({"type": "iter_smooth", "ext": {"sites": "all"}})
    assert sites(ctx, ALL_KINDS, entry.ext.sites) == every
    assert {kind for kind, _, _ in every} == {"norm-linear", "ov", "up-down"}
    assert sites(ctx, ["ov"], "all") == {site for site in every if site[0] == "ov"}


def test_an_unknown_sites_value_names_the_field() -> None:
    with pytest.raises(ValueError, match="ext.sites"):
        FlexSmoothQuant.model_validate({"type": "flex_smooth_quant", "ext": {"sites": "every"}})
    with pytest.raises(ValueError, match="ext.other"):
        FlexSmoothQuant.model_validate({"type": "flex_smooth_quant", "ext": {"other": 1}})


# Sparse layers of the MoE families, written from msModelSlim's adapters (msmodelslim/model/<family>/
# model_adapter.py, get_adapter_config_for_subgraph), with routed experts written out for the
# tiny demo model's expert count:
# - qwen3_moe: input_layernorm -> q/k/v, v_proj -> o_proj, every routed expert's up -> down (no
#   post_attention_layernorm site: it feeds the router as well);
# - deepseek_v3: input_layernorm -> q_a_proj + kv_a_proj_with_mqa, q_a_layernorm -> q_b_proj,
#   kv_b_proj -> o_proj, the shared experts' and every routed expert's up -> down;
# - glm4_moe: input_layernorm -> q/k/v and v_proj -> o_proj only.
def _experts_up_down(count: int) -> set[tuple[str, str, tuple[str, ...]]]:
    return {("up-down", f"mlp.experts.{e}.up_proj", (f"mlp.experts.{e}.down_proj",)) for e in range(count)}


_QKV_OV = {("norm-linear", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
           ("ov", "self_attn.v_proj", ("self_attn.o_proj",))}
_MLA = {("norm-linear", "input_layernorm", ("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa")),
        ("norm-linear", "self_attn.q_a_layernorm", ("self_attn.q_b_proj",)),
        ("ov", "self_attn.kv_b_proj", ("self_attn.o_proj",))}
MSMODELSLIM_SPARSE_SITES = {
    "qwen3_moe": lambda experts: _QKV_OV | _experts_up_down(experts),
    "deepseek_v3": lambda experts: _MLA | _experts_up_down(experts) | {
        ("up-down", "mlp.shared_experts.up_proj", ("mlp.shared_experts.down_proj",))},
    "glm4_moe": lambda experts: set(_QKV_OV),
}


def test_every_family_has_its_msmodelslim_row() -> None:
    assert set(MSMODELSLIM_SITES) | set(MSMODELSLIM_SPARSE_SITES) == set(model_types())


@pytest.mark.parametrize("family", sorted(MSMODELSLIM_SPARSE_SITES))
def test_moe_families_sparse_layers_default_to_msmodelslims_sites(family: str) -> None:
    from quantjob.worker.model.demo import demo_config

    config = demo_config(family, num_layers=3).to_dict()
    adapter = family_named(family).adapter
    assert adapter.sparse is not None
    sparse = next(i for i in range(3) if adapter.sparse.is_sparse(config, i))
    ctx = LayerContext(index=sparse, prefix=f"model.layers.{sparse}.", layer=torch.nn.Module(), linears={},
                       adapter=adapter, subgraphs=adapter.subgraphs(config, sparse))
    experts = next(int(config[key]) for key in adapter.sparse.num_experts_keys if config.get(key))
    assert sites(ctx, ALL_KINDS, "family") == MSMODELSLIM_SPARSE_SITES[family](experts)
