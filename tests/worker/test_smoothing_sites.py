"""Which smoothing sites a smoothing entry works on: by default msModelSlim's for the family, the
wider set only through the entry's ``ext.sites: all``."""

from __future__ import annotations

import pytest
import torch

from quantjob.api.modelslim import FlexSmoothQuant, IterSmooth
from quantjob.worker.adapters import ADAPTERS
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
    adapter = ADAPTERS[family]
    return LayerContext(index=0, prefix="model.layers.0.", layer=torch.nn.Module(), linears={}, adapter=adapter,
                        subgraphs=adapter.subgraphs(CONFIG))


def sites(ctx: LayerContext, kinds: list[str], which: str) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(site.kind, site.source, site.targets) for site in selected_sites(ctx, kinds, ["*"], [], which)}


def test_the_table_names_families_that_exist() -> None:
    assert set(MSMODELSLIM_SITES) <= set(ADAPTERS)


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
    every = {(spec.kind, spec.source, spec.targets) for spec in ADAPTERS[family].subgraph_specs}
    entry = IterSmooth.model_validate({"type": "iter_smooth", "ext": {"sites": "all"}})
    assert sites(ctx, ALL_KINDS, entry.ext.sites) == every
    assert {kind for kind, _, _ in every} == {"norm-linear", "ov", "up-down"}
    assert sites(ctx, ["ov"], "all") == {site for site in every if site[0] == "ov"}


def test_an_unknown_sites_value_names_the_field() -> None:
    with pytest.raises(ValueError, match="ext.sites"):
        FlexSmoothQuant.model_validate({"type": "flex_smooth_quant", "ext": {"sites": "every"}})
    with pytest.raises(ValueError, match="ext.other"):
        FlexSmoothQuant.model_validate({"type": "flex_smooth_quant", "ext": {"other": 1}})
