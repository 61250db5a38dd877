"""One test per compatibility rule (docs/design.md, section 3), each asserting the exact problem path."""

from __future__ import annotations

from typing import Any

import pytest

from quantjob.api import catalogue
from quantjob.api.catalogue import Algorithm
from quantjob.api.check import check, check_document, resolve
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.problems import Problem

W8 = {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}
A8 = {"scope": "per_tensor", "dtype": "int8", "symmetric": False, "method": "minmax"}


def lq(weight: dict[str, Any] | None = None, act: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    qconfig: dict[str, Any] = {"weight": {**W8, **(weight or {})}}
    if act is not None:
        qconfig["act"] = {**A8, **act}
    return {"type": "linear_quant", "qconfig": qconfig, **extra}


def config(*process: dict[str, Any], **spec: Any) -> ModelslimConfig:
    return ModelslimConfig.model_validate({"apiversion": "modelslim_v1",
                                           "spec": {"process": list(process) or [lq(act={})], **spec}})


def only(problems: list[Problem], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, f"expected one problem at {path}, got {problems}"
    return found[0]


# --- runner ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("devices", "runner", "world"), [(1, "layer_wise", 1), (2, "dp_layer_wise", 2),
                                                          (8, "dp_layer_wise", 8)])
def test_auto_runner(devices: int, runner: str, world: int) -> None:
    result = resolve(config(runner="auto"), devices)
    assert (result.runner, result.world_size, result.problems) == (runner, world, [])
    assert result.config is not None and result.config.spec.runner == runner


def test_dp_on_one_device_falls_back_with_a_warning() -> None:
    result = resolve(config(runner="dp_layer_wise"), 1)
    problem = only(result.problems, "spec.config.spec.runner")
    assert problem.severity == "warning" and "falling back to layer_wise" in problem.message
    assert (result.runner, result.world_size, result.ok) == ("layer_wise", 1, True)


def test_layer_wise_on_several_devices_is_an_error() -> None:
    problem = only(check(config(runner="layer_wise"), 4), "spec.config.spec.runner")
    assert problem.severity == "error" and "dp_layer_wise" in problem.message


def test_model_wise_runs_layer_by_layer_with_a_warning() -> None:
    result = resolve(config(runner="model_wise"), 2)
    assert only(result.problems, "spec.config.spec.runner").severity == "warning"
    assert result.runner == "dp_layer_wise" and result.ok


# --- processors -----------------------------------------------------------------------------

def test_known_but_unimplemented_processor() -> None:
    problems = check(config({"type": "awq", "n_grid": 20}, lq(act={})), 1, prefix="")
    problem = only(problems, "spec.process[0].type")
    assert "known msModelSlim processor, not supported yet" in problem.message
    assert "linear_quant" in problem.message  # the alternatives


def test_processor_without_distributed_support_under_dp(monkeypatch: pytest.MonkeyPatch) -> None:
    # A new algorithm is one catalogue entry: the rule reads it, nothing else changes.
    local_only = Algorithm("iter_smooth", "processor", "test double", implemented=True, distributed=False)
    monkeypatch.setitem(catalogue.PROCESSORS, "iter_smooth", local_only)
    cfg = config({"type": "iter_smooth"}, lq(act={}))
    problem = only(check(cfg, 2), "spec.config.spec.process[0].type")
    assert "cannot run under dp_layer_wise" in problem.message and "linear_quant" in problem.message
    assert check(cfg, 1) == []


def test_empty_subgraph_list(monkeypatch: pytest.MonkeyPatch) -> None:
    double = Algorithm("flex_smooth_quant", "processor", "double", distributed=True, aliases=("flex_smooth",))
    for name in ("flex_smooth_quant", "flex_smooth"):
        monkeypatch.setitem(catalogue.PROCESSORS, name, double)
    problems = check(config({"type": "flex_smooth", "enable_subgraph_type": []}, lq(act={})), 2)
    assert only(problems, "spec.config.spec.process[0].enable_subgraph_type").severity == "error"
    assert [p.path for p in problems] == ["spec.config.spec.process[0].enable_subgraph_type"]


def test_prior_stages_are_not_supported() -> None:
    cfg = ModelslimConfig.model_validate({"spec": {"prior": [{"process": [{"type": "adapt_rotation"}]}],
                                                   "process": [lq()]}})
    assert "not supported yet" in only(check(cfg, 1), "spec.config.spec.prior[0]").message


# --- observers --------------------------------------------------------------------------------

def test_unimplemented_method() -> None:
    problem = only(check(config(lq(act={"method": "histogram"})), 1),
                   "spec.config.spec.process[0].qconfig.act.method")
    assert "known msModelSlim method, not supported yet" in problem.message


def test_unknown_method() -> None:
    problem = only(check(config(lq(weight={"method": "kmeans"})), 1),
                   "spec.config.spec.process[0].qconfig.weight.method")
    assert "unknown method 'kmeans'" in problem.message and "minmax" in problem.message


def test_method_without_distributed_support_under_dp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(catalogue.OBSERVERS, "gptq", Algorithm("gptq", "observer", "double", distributed=False))
    cfg = config({"type": "group", "configs": [lq(), lq(weight={"method": "gptq"})]})
    only(check(cfg, 3), "spec.config.spec.process[0].configs[1].qconfig.weight.method")
    assert check(cfg, 1) == []


def test_method_scope_limits_come_from_the_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(catalogue.OBSERVERS, "ssz", Algorithm("ssz", "observer", "double", distributed=True,
                                                              scopes=("per_channel",)))
    cfg = config(lq(weight={"method": "ssz", "scope": "per_group", "dtype": "int4", "ext": {"group_size": 128}}))
    problem = only(check(cfg, 2), "spec.config.spec.process[0].qconfig.weight.method")
    assert "per_channel" in problem.message and "per_group" in problem.message
    assert check(config(lq(weight={"method": "ssz"})), 2) == []


# --- quantization schemes ----------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "path", "severity"), [
    (lq(weight={"scope": "per_group", "dtype": "int4"}), "qconfig.weight.ext.group_size", "error"),
    (lq(weight={"ext": {"group_size": 64}}), "qconfig.weight.ext.group_size", "warning"),
    (lq(weight={"scope": "per_tensor"}), "qconfig.weight.scope", "error"),
    (lq(act={"dtype": "int4"}), "qconfig.act.dtype", "error"),
    (lq(act={"scope": "pd_mix"}), "qconfig.act.scope", "error"),
    (lq(act={"scope": "per_token", "symmetric": False}), "qconfig.act.symmetric", "warning"),
    (lq(act={"scope": "per_token", "symmetric": True}, weight={"dtype": "int4"}), "qconfig.weight.dtype", "error"),
])
def test_scheme_rules(entry: dict[str, Any], path: str, severity: str) -> None:
    problems = check(config(entry, save=[{"type": "compressed_tensors_saver"}]), 1, prefix="")
    assert [(p.path, p.severity) for p in problems] == [(f"spec.process[0].{path}", severity)]


@pytest.mark.parametrize("entry", [
    lq(act={}), lq(act={"scope": "per_token", "symmetric": True}), lq(),
    lq(weight={"scope": "per_group", "dtype": "int4", "ext": {"group_size": 128}}),
])
def test_supported_schemes_pass(entry: dict[str, Any]) -> None:
    assert check(config(entry, save=[{"type": "compressed_tensors_saver"}]), 2) == []


# --- multimodal ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["vision_config", "audio_config"])
def test_multimodal_model_rejected_under_dp(key: str) -> None:
    problem = only(check(config(), 2, model_config={"model_type": "qwen2_vl", key: {}}), "spec.config.spec.runner")
    assert "layer_wise" in problem.message
    assert check(config(), 1, model_config={key: {}}) == []


def test_multimodal_apiversion_rejected_under_dp() -> None:
    cfg = ModelslimConfig.model_validate({"apiversion": "multimodal_vlm_modelslim_v1",
                                          "spec": {"process": [lq()], "default_text": "Describe."}})
    only(check(cfg, 2), "spec.config.spec.runner")
    assert check(cfg, 1) == []


# --- savers ----------------------------------------------------------------------------------------------

def test_ascendv1_saver_is_converted_under_dp_only() -> None:
    cfg = config(save=[{"type": "ascendv1_saver", "part_file_size": 4}])
    dp = resolve(cfg, 2)
    assert dp.config is not None and [(s.type, s.part_file_size) for s in dp.config.spec.save] == \
        [("distributed_ascendv1_saver", 4)]
    single = resolve(cfg, 1)
    assert single.config is not None and single.config.spec.save[0].type == "ascendv1_saver"
    assert cfg.spec.save[0].type == "ascendv1_saver"  # the input is not modified


def test_unimplemented_saver() -> None:
    problem = only(check(config(save=[{"type": "mindie_format_saver"}]), 1), "spec.config.spec.save[0].type")
    assert "not supported yet" in problem.message


def test_saver_without_distributed_form_under_dp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(catalogue.SAVERS, "compressed_tensors_saver",
                        Algorithm("compressed_tensors_saver", "saver", "double"))
    cfg = config(save=[{"type": "compressed_tensors_saver"}])
    assert "cannot run under dp_layer_wise" in only(check(cfg, 2), "spec.config.spec.save[0].type").message
    assert check(cfg, 1) == []


def test_saver_directory_and_empty_save_list() -> None:
    assert only(check(config(save=[{"save_directory": "/tmp/out"}]), 1),
                "spec.config.spec.save[0].save_directory").severity == "warning"
    assert only(check(config(save=[]), 1), "spec.config.spec.save").severity == "error"


# --- whole documents ----------------------------------------------------------------------------------------

def job(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"pvc": "models", "path": "Qwen2.5-7B"},
                            "output": {"pvc": "quantized", "path": "out"}, "devices": {"count": 2}}
    base.update(spec)
    return {"apiVersion": "quantjob.io/v1alpha1", "kind": "QuantJob", "metadata": {"name": "j"}, "spec": base}


def test_document_devices_override_wins() -> None:
    assert check_document(job(quantType="w8a8")).world_size == 2
    result = check_document(job(quantType="w8a8"), devices=4)
    assert (result.runner, result.world_size, result.job is not None) == ("dp_layer_wise", 4, True)


def test_preset_problems_point_at_quant_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(catalogue.OBSERVERS, "minmax", Algorithm("minmax", "observer", "double", distributed=False))
    result = check_document(job(quantType="w8a16"))
    assert {p.path for p in result.problems} == {"spec.quantType"}


@pytest.mark.parametrize(("output", "fragment"), [
    ("Qwen2.5-7B/", "is the model directory"),
    ("./Qwen2.5-7B", "is the model directory"),       # admitted before: the paths were compared as strings
    ("Qwen2.5-7B//.", "is the model directory"),
    ("Qwen2.5-7B/w8a8", "is inside the model directory"),
    ("./Qwen2.5-7B//quant/", "is inside the model directory"),
    (".", "contains the model directory"),
])
def test_output_must_stay_out_of_the_model_directory(output: str, fragment: str) -> None:
    result = check_document(job(quantType="w8a8", output={"pvc": "models", "path": output}))
    assert fragment in only(result.problems, "spec.output.path").message


def test_output_containing_a_nested_model_is_refused() -> None:
    result = check_document(job(quantType="w8a8", model={"pvc": "models", "path": "org/Qwen2.5-7B"},
                                output={"pvc": "models", "path": "./org"}))
    assert "contains the model directory" in only(result.problems, "spec.output.path").message


@pytest.mark.parametrize(("pvc", "output"), [("models", "Qwen2.5-7B-w8a8"), ("models", "quantized/Qwen2.5-7B"),
                                             ("quantized", "Qwen2.5-7B"), ("quantized", ".")])
def test_outputs_beside_the_model_are_admitted(pvc: str, output: str) -> None:
    assert check_document(job(quantType="w8a8", output={"pvc": pvc, "path": output})).problems == []


def test_config_dataset_is_ignored_when_the_job_names_calibration() -> None:
    cfg = {"spec": {"process": [lq()], "dataset": "mix_calib.jsonl"}}
    result = check_document(job(config=cfg, calibration={"path": "calib/boolq.jsonl"}))
    assert only(result.problems, "spec.config.spec.dataset").severity == "warning"
    assert check_document(job(config=cfg)).problems == []


@pytest.mark.parametrize(("data", "path"), [
    ([1, 2], "<document>"),
    ("w8a8", "<document>"),
    ({"apiVersion": "apps/v1", "kind": "Deployment"}, "kind"),
    ({"apiVersion": "batch/v1", "kind": "QuantJob", "spec": {}}, "apiVersion"),
    ({"apiVersion": "quantjob.io/v1alpha1", "kind": "QuantJob"}, "spec"),
])
def test_documents_that_are_neither(data: Any, path: str) -> None:
    result = check_document(data)
    assert not result.ok and [p.path for p in result.problems] == [path]


def test_bare_config_defaults_to_one_device() -> None:
    result = check_document({"apiversion": "modelslim_v1", "spec": {"process": [lq()]}})
    assert (result.runner, result.world_size, result.problems) == ("layer_wise", 1, [])
    assert check_document({"spec": {"process": [lq()]}}, devices=3).runner == "dp_layer_wise"


# --- rules the worker used to find alone (issue 14, item 8) ------------------------------------

@pytest.mark.parametrize("include", [["lm_head"], ["*self_attn*", "{lm_head,model.norm}"], ["*lm_head*"]])
def test_lm_head_in_include_is_refused_at_admission(include: list[str]) -> None:
    result = check_document(job(config={"spec": {"process": [lq(include=include)]}}))
    assert "lm_head" in only(result.problems, "spec.config.spec.process[0].include").message
    problems = check(config(lq(act={}), {"type": "group", "configs": [lq(include=include)]}), 1)
    only(problems, "spec.config.spec.process[1].configs[0].include")


def test_wildcards_that_only_happen_to_match_lm_head_pass() -> None:
    assert check(config(lq(include=["*"]), lq(include=["lm_*"])), 1) == []


def test_mixed_group_sizes_are_refused_at_admission() -> None:
    """They failed only at the very end, with a traceback: the ascendv1 description holds one group
    size. Per-group weights do not load in vllm-ascend at all, so admission refuses them already."""
    w4 = {"scope": "per_group", "dtype": "int4", "ext": {"group_size": 128}}
    mixed = config(lq(weight=w4, include=["*self_attn*"]),
                   lq(weight={**w4, "ext": {"group_size": 64}}, include=["*mlp*"]))
    problems = check(mixed, 1)
    assert any(p.path.startswith("spec.config.spec.process[1].qconfig.weight") and p.severity == "error"
               for p in problems), problems


@pytest.mark.parametrize(("model_type", "ok"), [("gpt2", False), ("Mixtral-8x7B", False), ("DeepSeek-V3", True), ("Qwen2.5-7B", True),
                                                ("llama", True)])
def test_model_type_override_is_checked_at_admission(model_type: str, ok: bool) -> None:
    result = check_document(job(quantType="w8a8", model={"pvc": "models", "path": "m", "modelType": model_type}))
    assert (result.problems == []) is ok
    if not ok:
        assert "not supported" in only(result.problems, "spec.model.modelType").message


def test_model_type_of_a_given_config_json_is_checked() -> None:
    bare = {"spec": {"process": [lq()]}}
    gpt2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    assert "gpt2" in only(check_document(bare, model_config=gpt2).problems, "config.json").message
    assert "gpt2" in only(check_document(job(quantType="w8a8"), model_config=gpt2).problems, "config.json").message
    assert check_document(bare, model_config={"model_type": "qwen3"}).problems == []
    assert only(check_document(bare, model_config={}).problems, "config.json").severity == "error"


def test_patterns_of_one_config_have_a_shared_budget() -> None:
    wide = "model.layers.{" + ",".join(str(i) for i in range(256)) + "}.mlp.up_proj"  # ~7 KB expanded
    problems = check(config(lq(include=[wide] * 40)), 1)
    problem = only(problems, "spec.config.spec.process[0].include[37]")
    assert "expand to more than" in problem.message
