"""ascendv1 outputs that vllm-ascend loads: every refused combination is refused by ``check`` with
its field and fix (so the CLI, the webhook and the worker say it before any work), every accepted
preset's output passes ``ascend_reader`` (vllm-ascend's loader decisions and parameter shapes), and
the outputs of the refused combinations, written with the check bypassed, fail that reader.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).parent))
import ascend_reader

from quantjob.api.check import check
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.problems import Problem
from quantjob.cli import main

W8 = {"scope": "per_channel", "dtype": "int8", "symmetric": True}
STATIC = {"scope": "per_tensor", "dtype": "int8", "symmetric": False}
DYNAMIC = {"scope": "per_token", "dtype": "int8", "symmetric": True}
W4 = {"scope": "per_group", "dtype": "int4", "symmetric": True, "ext": {"group_size": 32}}


def lq(weight: dict[str, Any], act: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    qconfig: dict[str, Any] = {"weight": weight} | ({"act": act} if act else {})
    return {"type": "linear_quant", "qconfig": qconfig, **extra}


def cfg(*process: dict[str, Any], save: list[dict[str, Any]] | None = None) -> ModelslimConfig:
    return ModelslimConfig.model_validate({"apiversion": "modelslim_v1", "spec": {
        "process": list(process), "save": save or [{"type": "ascendv1_saver"}]}})


def errors(config: ModelslimConfig, model_config: dict[str, Any] | None = None) -> list[Problem]:
    return [p for p in check(config, 1, model_config, prefix="") if p.severity == "error"]


def one(problems: list[Problem], path: str, *needles: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, f"expected one problem at {path}: {problems}"
    for needle in needles:
        assert needle in found[0].message, (needle, found[0].message)
    return found[0]


# --- refused combinations, each with its field and its fix ---------------------------------------------------

def test_an_excluded_v_proj_splits_qkv() -> None:
    problem = one(errors(cfg(lq(W8, STATIC, exclude=["*v_proj"]))), "spec.process[0].exclude",
                  "layer 0 (and every layer alike)", "q_proj W8A8", "v_proj FLOAT", "qkv_proj",
                  "fix: quantize all of them the same way, or keep all of them float",
                  "'*.self_attn.{q_proj,k_proj,v_proj}'")
    assert problem.severity == "error"


def test_the_layer_count_comes_from_the_model_config() -> None:
    problems = errors(cfg(lq(W8, STATIC, exclude=["model.layers.3.mlp.up_proj"])),
                      {"model_type": "qwen2", "num_hidden_layers": 28})
    one(problems, "spec.process[0].exclude", "layer 3:", "gate_proj W8A8", "up_proj FLOAT", "gate_up_proj")
    one(errors(cfg(lq(W8, STATIC, exclude=["*up_proj"])), {"num_hidden_layers": 28}), "spec.process[0].exclude",
        "layer 0 (and 27 more):")
    assert errors(cfg(lq(W8, STATIC, exclude=["model.layers.30.mlp.up_proj"])), {"num_hidden_layers": 28}) == []


def test_a_group_that_gives_shards_different_types() -> None:
    group = {"type": "group", "configs": [lq(W8, DYNAMIC, include=["*q_proj", "*k_proj"]), lq(W8)]}
    one(errors(cfg(group)), "spec.process[0].configs[1].include", "q_proj W8A8_DYNAMIC", "v_proj W8A16")


def test_not_included_shard() -> None:
    one(errors(cfg(lq(W8, DYNAMIC, include=["*gate_proj", "*attn*"]))), "spec.process[0].include",
        "up_proj FLOAT", "gate_up_proj")


def test_whole_fused_modules_float_or_alike_pass() -> None:
    assert errors(cfg(lq(W8, STATIC, exclude=["*self_attn.[qkv]_proj", "*mlp.*"]))) == []
    assert errors(cfg(lq(W8, DYNAMIC, include=["*o_proj", "*down_proj"]), lq(W8))) == []


def test_compressed_tensors_needs_the_same_exact_scheme_on_shards() -> None:
    w4_64 = {**W4, "ext": {"group_size": 64}}
    config = cfg(lq(W4, include=["*q_proj", "*k_proj"]), lq(w4_64),
                 save=[{"type": "compressed_tensors_saver"}])
    one(errors(config), "spec.process[1].include", "q_proj W4A16 (per_group 32)", "v_proj W4A16 (per_group 64)")


def test_w4a16_with_ascendv1_points_to_compressed_tensors() -> None:
    one(errors(cfg(lq(W4))), "spec.process[0].qconfig.weight.dtype", "vllm-ascend has no dense W4A16",
        "fix: use type: compressed_tensors_saver in spec.save[0]")
    assert errors(cfg(lq(W4), save=[{"type": "compressed_tensors_saver"}])) == []


def test_per_group_w8a16_with_ascendv1() -> None:
    one(errors(cfg(lq({**W8, "scope": "per_group", "ext": {"group_size": 32}}))),
        "spec.process[0].qconfig.weight.scope", "per-channel scales [out, 1] only", "compressed_tensors_saver")


def test_static_w8a8_of_a_float32_model_needs_the_model_config() -> None:
    config = cfg(lq(W8, STATIC))
    one(errors(config, {"model_type": "llama", "torch_dtype": "float32"}), "spec.process[0].qconfig.act.scope",
        "deq_scale only for bfloat16 and float16", "convert the model to bfloat16")
    assert errors(config) == []                                      # the webhook cannot know
    assert errors(config, {"dtype": "bfloat16"}) == []
    assert errors(cfg(lq(W8, DYNAMIC)), {"dtype": "float32"}) == []   # only static W8A8 lacks deq_scale


def test_w8a8_needs_per_channel_symmetric_weights() -> None:
    one(errors(cfg(lq({**W8, "scope": "per_group", "ext": {"group_size": 32}}, STATIC))),
        "spec.process[0].qconfig.weight.scope", "W8A8 needs per_channel weights")
    one(errors(cfg(lq({**W8, "symmetric": False}, DYNAMIC), save=[{"type": "compressed_tensors_saver"}])),
        "spec.process[0].qconfig.weight.symmetric", "symmetric weights")


def test_asymmetric_smoothing_with_compressed_tensors() -> None:
    smooth = {"type": "iter_smooth", "symmetric": False}
    one(check(cfg(smooth, lq(W8, STATIC), save=[{"type": "compressed_tensors_saver"}]), 1, prefix=""),
        "spec.process[0].symmetric", "transformers drops it, vLLM refuses", "ascendv1_saver")


def test_asymmetric_weight_only_with_compressed_tensors_is_a_warning() -> None:
    problem = one(check(cfg(lq({**W4, "symmetric": False}), save=[{"type": "compressed_tensors_saver"}]), 1,
                        prefix=""), "spec.process[0].qconfig.weight.symmetric", "transformers")
    assert problem.severity == "warning"


def test_several_savers_write_one_sub_directory_each() -> None:
    both = [{"type": "ascendv1_saver"}, {"type": "compressed_tensors_saver", "save_directory": "ct"}]
    problem = one(check(cfg(lq(W8, DYNAMIC), save=both), 1, prefix=""), "spec.save",
                  "ascendv1/ (spec.save[0] ascendv1_saver)", "ct/ (spec.save[1] compressed_tensors_saver)")
    assert problem.severity == "warning"
    same = [{"type": "ascendv1_saver"}, {"type": "ascendv1_saver", "part_file_size": 1}]
    one(errors(cfg(lq(W8, DYNAMIC), save=same)), "spec.save[1].save_directory", "both write ascendv1/",
        "distinct save_directory")
    for bad in ("../up", "/abs", "a/../b", ".hidden"):
        one(errors(cfg(lq(W8, DYNAMIC), save=[{"type": "ascendv1_saver", "save_directory": bad},
                                             {"type": "compressed_tensors_saver"}])),
            "spec.save[0].save_directory", "plain relative name")
    # each saver's own rules still apply: W4A16 is fine for compressed-tensors, not for ascendv1
    one(errors(cfg(lq(W4), save=both)), "spec.process[0].qconfig.weight.dtype", "spec.save[0]")


def test_a_brace_bomb_is_left_to_the_pattern_rules_without_expanding() -> None:
    bomb = "".join("{a,b,c,d}" for _ in range(20)) + "*v_proj"
    started = time.monotonic()
    with pytest.raises(ValidationError, match="expand to more than"):  # the pattern rules refuse it as parsed
        check(cfg(lq(W8, STATIC, exclude=[bomb])), 1, prefix="")
    assert time.monotonic() - started < 1.0


# --- accepted presets load; refused combinations do not ------------------------------------------------------

@pytest.fixture(scope="module")
def calib(calib_jsonl: Callable[..., Path]) -> Path:
    return calib_jsonl(6)


def _quantize(model: Path, calib: Path, out: Path, *option: str) -> Path:
    argv = ["quantize", "--model_path", str(model), "--save_path", str(out), "--calib_file", str(calib),
            "--calib_samples", "6", "--max_length", "48", *option]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize(("family", "dtype"), [("qwen2", torch.bfloat16), ("llama", torch.float16)])
@pytest.mark.parametrize(("quant_type", "scheme"), [("w8a8", "W8A8"), ("w8a8_dynamic", "W8A8_DYNAMIC"),
                                                    ("w8a16", "W8A16")])
def test_every_ascend_preset_output_loads(family: str, dtype: torch.dtype, quant_type: str, scheme: str,
                                          tiny_model: Callable[..., Path], calib: Path, tmp_path: Path) -> None:
    model = tiny_model(family, 2, dtype=dtype)
    out = _quantize(model, calib, tmp_path / "out", "--quant_type", quant_type)
    schemes = ascend_reader.read(out)
    assert set(schemes.values()) == {scheme} and len(schemes) == 8


def test_float_fused_modules_load(tiny_model: Callable[..., Path], calib: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg(lq(W8, STATIC, exclude=["*self_attn.[qkv]_proj"])).model_dump(mode="json")))
    out = _quantize(tiny_model("qwen2", 2), calib, tmp_path / "out", "--config_path", str(config))
    schemes = ascend_reader.read(out)
    assert schemes["model.layers.1.self_attn.qkv_proj"] == "FLOAT"
    assert schemes["model.layers.1.mlp.gate_up_proj"] == "W8A8"


REFUSED = [
    ("split qkv", lq(W8, STATIC, exclude=["*v_proj"]), torch.bfloat16, ValueError, "Detected some but not all"),
    ("w4a16", lq(W4), torch.bfloat16, NotImplementedError, "quant_type=W4A16 for layer_type=linear"),
    ("per-group w8a16", lq({**W8, "scope": "per_group", "ext": {"group_size": 32}}), torch.bfloat16,
     ascend_reader.NotLoadable, "weight_scale"),
    ("static float32", lq(W8, STATIC), torch.float32, ascend_reader.NotLoadable, "deq_scale"),
]


@pytest.mark.parametrize(("name", "entry", "dtype", "error", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_refused_combinations_would_not_load(name: str, entry: dict[str, Any], dtype: torch.dtype,
                                                 error: type[Exception], message: str,
                                                 tiny_model: Callable[..., Path], calib: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.worker import preflight

    model = tiny_model("llama", 2, dtype=dtype)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg(entry).model_dump(mode="json")))
    assert main(["quantize", "--model_path", str(model), "--save_path", str(tmp_path / "refused"),
                 "--config_path", str(config)]) == 2                 # refused before any work
    assert not (tmp_path / "refused").exists()
    # written anyway, with every rule bypassed, the output fails where vllm-ascend would
    monkeypatch.setattr("quantjob.worker.entry.resolve", _without_output_rules)
    monkeypatch.setattr(preflight, "output_problems", lambda *args, **kwargs: [])
    out = _quantize(model, calib, tmp_path / "out", "--config_path", str(config))
    with pytest.raises(error, match=message):
        ascend_reader.read(out)


def _without_output_rules(config: ModelslimConfig, devices: int, model_config: Any = None, prefix: str = "") -> Any:
    from quantjob.api import check as check_module

    real = check_module.output_problems
    check_module.output_problems = lambda *args, **kwargs: []  # type: ignore[assignment]
    try:
        return check_module.resolve(config, devices, model_config, prefix)
    finally:
        check_module.output_problems = real  # type: ignore[assignment]


def test_the_worker_refuses_static_w8a8_of_a_float32_model_before_any_work(
        tiny_model: Callable[..., Path], calib: Path, tmp_path: Path) -> None:
    from quantjob.api.check import resolve
    from quantjob.worker.errors import QuantJobError
    from quantjob.worker.group.distributed import ProcessGroup
    from quantjob.worker.loop.runner import WorkerJob, run_quantization

    config = resolve(cfg(lq(W8, STATIC)), 1).config                 # as the webhook admitted it: no model config
    assert config is not None
    job = WorkerJob(model_path=tiny_model("llama", 2, dtype=torch.float32), save_path=tmp_path / "out",
                    config=config, calib_file=calib, calib_samples=6, max_length=48)
    with pytest.raises(QuantJobError, match=r"spec.process\[0\].qconfig.act.scope: static W8A8 of a float32 model"):
        run_quantization(job, ProcessGroup(), torch.device("cpu"))
    assert not (tmp_path / "out").exists()
