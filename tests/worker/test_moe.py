"""Mixture-of-Experts models through the loop (in one process): routed-token counts and starved
experts (a static activation scheme refused naming the expert, or every token run through every
expert for statistics with ``calibrate_all_experts``; dynamic activations need no statistics), the
router kept float, the MTP layer copied float, and the expert linears under the checkpoint's names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantjob.api.check import resolve
from quantjob.api.modelslim import ModelslimConfig
from quantjob.worker.errors import QuantJobError
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.runner import WorkerJob, run_quantization
from quantjob.worker.model.demo import DEMO_EXPERTS, build_demo_model

CPU = torch.device("cpu")
STATIC = {"act": {"scope": "per_tensor", "symmetric": False}, "weight": {"scope": "per_channel"}}
DYNAMIC = {"act": {"scope": "per_token"}, "weight": {"scope": "per_channel"}}


def _config(qconfig: dict[str, Any]) -> ModelslimConfig:
    data = {"apiversion": "modelslim_v1", "spec": {"process": [{"type": "linear_quant", "qconfig": qconfig}]}}
    config = resolve(ModelslimConfig.model_validate(data), 1).config
    assert config is not None
    return config


@pytest.fixture(scope="module")
def starving_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepSeek-V3, 3 layers (0 dense, 1-2 MoE, an MTP layer after them): in layer 1 expert 7's
    correction bias is -100, so its group (experts 6 and 7) never wins the grouped top-k and
    no token reaches either."""
    path = build_demo_model(tmp_path_factory.mktemp("moe") / "deepseek", family="deepseek_v3", num_layers=3,
                            hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=4, seed=5)
    file = path / "model.safetensors"
    tensors = load_file(file)
    bias = tensors["model.layers.1.mlp.gate.e_score_correction_bias"].clone()
    bias[7] = -100.0
    tensors["model.layers.1.mlp.gate.e_score_correction_bias"] = bias
    save_file(tensors, file, metadata={"format": "pt"})
    return path


@pytest.fixture
def no_output_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static int8 experts load in no engine today, so the output rules refuse them before any work
    (``quantjob.api.rules_moe``; ``test_static_experts_are_refused_by_the_output_rules``). The loop's
    own handling of starved experts under static activations is what these tests check: they take
    the output rules away so that a run reaches it."""
    from quantjob.worker import preflight

    monkeypatch.setattr(preflight, "output_problems", lambda *args, **kwargs: [])


def _run(model: Path, config: ModelslimConfig, calib: Path, save: Path, saver: Any, **options: Any) -> Any:
    job = WorkerJob(model_path=model, save_path=save, config=config, calib_file=calib, calib_samples=6,
                    max_length=64, **options)
    return run_quantization(job, ProcessGroup(), CPU, open_saver_fn=saver)


def test_static_experts_are_refused_by_the_output_rules(
        starving_model: Path, calib_jsonl: Callable[..., Path], memory_saver: Any, tmp_path: Path) -> None:
    with pytest.raises(QuantJobError) as info:
        _run(starving_model, _config(STATIC), calib_jsonl(6), tmp_path / "out", memory_saver)
    assert "model.layers.1.mlp.experts.0.gate_proj (a routed expert) would be static W8A8" in str(info.value)
    assert memory_saver.last is None  # refused before a saver was opened


@pytest.mark.usefixtures("no_output_rules")
def test_static_activations_of_a_starved_expert_are_refused_by_name(
        starving_model: Path, calib_jsonl: Callable[..., Path], memory_saver: Any, tmp_path: Path) -> None:
    with pytest.raises(QuantJobError) as info:
        _run(starving_model, _config(STATIC), calib_jsonl(6), tmp_path / "out", memory_saver)
    message = str(info.value)
    assert "model.layers.1.mlp.experts.6." in message and "no calibration token" in message
    assert "--calibrate_all_experts" in message


@pytest.mark.usefixtures("no_output_rules")
def test_calibrate_all_experts_gives_starved_experts_static_scales(
        starving_model: Path, calib_jsonl: Callable[..., Path], memory_saver: Any, tmp_path: Path) -> None:
    summary = _run(starving_model, _config(STATIC), calib_jsonl(6), tmp_path / "out", memory_saver,
                   calibrate_all_experts=True)
    saver = memory_saver.last
    records = {r.name: r for r in saver.layers[1].quantized}
    for e in (6, 7):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            record = records[f"model.layers.1.mlp.experts.{e}.{proj}"]
            assert record.scheme == "W8A8" and record.input_scale is not None
    report = {entry["layer"]: entry for entry in summary.errors["experts"]}
    assert summary.errors["calibrate_all_experts"] is True
    assert report[1]["starved"] == ["model.layers.1.mlp.experts.6", "model.layers.1.mlp.experts.7"]
    assert report[1]["routed_tokens"][6:] == [0, 0] and sum(report[1]["routed_tokens"]) > 0
    # the routed outputs are unchanged by the statistics-only pass: the same float inputs reach layer 2
    plain = _run(starving_model, _config(DYNAMIC), calib_jsonl(6), tmp_path / "plain", memory_saver)
    assert [e["routed_tokens"] for e in plain.errors["experts"]] == \
        [e["routed_tokens"] for e in summary.errors["experts"]]


def test_dynamic_activations_need_no_statistics(
        starving_model: Path, calib_jsonl: Callable[..., Path], memory_saver: Any, tmp_path: Path) -> None:
    summary = _run(starving_model, _config(DYNAMIC), calib_jsonl(6), tmp_path / "out", memory_saver)
    saver = memory_saver.last
    names = {r.name for r in saver.layers[1].quantized}
    expected = {f"model.layers.1.mlp.experts.{e}.{p}" for e in range(DEMO_EXPERTS)
                for p in ("gate_proj", "up_proj", "down_proj")}
    assert expected <= names  # every expert quantized under the checkpoint's names, starved ones included
    assert {f"model.layers.1.mlp.shared_experts.{p}" for p in ("gate_proj", "up_proj", "down_proj")} <= names
    floats = saver.layers[1].float_tensors
    # the router stays float (float32 as stored)
    assert floats["model.layers.1.mlp.gate.weight"].dtype == torch.float32
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in floats
    assert not any(name.startswith("model.layers.1.mlp.gate") for name in names)
    # the MTP layer (model.layers.3.*) is not run; its tensors are copied float with the embedding
    assert saver.outer is not None and "model.layers.3.eh_proj.weight" in saver.outer
    assert "model.layers.3.mlp.experts.0.up_proj.weight" in saver.outer
    assert 3 not in saver.layers
    starved = [name for entry in summary.errors["experts"] for name in entry["starved"]]
    assert starved == ["model.layers.1.mlp.experts.6", "model.layers.1.mlp.experts.7"]
    assert summary.errors["calibrate_all_experts"] is False


def test_packed_modules_of_moe_families_are_checked_alike() -> None:
    """vllm-ascend packs DeepSeek's q_a_proj with kv_a_proj_with_mqa and reads a layer's experts from
    expert 0's gate/up/down: a config that splits them is refused before any work."""
    from quantjob.api.check import check
    from quantjob.api.rules_output import layout_for

    def problems(exclude: list[str], model_type: str) -> list[str]:
        data = {"apiversion": "modelslim_v1", "spec": {"process": [
            {"type": "linear_quant", "qconfig": DYNAMIC, "exclude": exclude}], "save": [{"type": "ascendv1_saver"}]}}
        config = ModelslimConfig.model_validate(data)
        found = check(config, 1, {"model_type": model_type, "num_hidden_layers": 4}, prefix="")
        return [p.message for p in found if p.severity == "error"]

    assert any("fused_qkv_a_proj" in m for m in problems(["*kv_a_proj_with_mqa"], "deepseek_v3"))
    assert any("experts" in m and "down_proj" in m for m in problems(["*experts.0.down_proj"], "qwen3_moe"))
    assert any("gate_up_proj" in m for m in problems(["*shared_experts.up_proj"], "glm4_moe"))
    assert problems(["*mlp.gate"], "deepseek_v3") == []  # the router is no linear: nothing to split
    assert {fused for fused, _ in layout_for({"model_type": "deepseek_v3"}).fused} >= {
        "self_attn.fused_qkv_a_proj", "mlp.experts"}


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "glm4_moe"])
def test_w8a8_dynamic_every_moe_family(family: str, tiny_model: Callable[..., Path],
                                       calib_jsonl: Callable[..., Path], memory_saver: Any, tmp_path: Path) -> None:
    """Every linear of a dense and a sparse layer quantized within half a step, under the checkpoint's
    names; every other source tensor handed to the saver once, float and byte-identical (the MTP
    layer's with the embedding); routed tokens counted in the error table."""
    from test_runner import _source

    from quantjob.worker.loop.quantizers import dequantize_weight
    from quantjob.worker.model.checkpoint import load_tensor

    model = tiny_model(family, 2)
    summary = _run(model, _config(DYNAMIC), calib_jsonl(6), tmp_path / "out", memory_saver)
    saver = memory_saver.last
    source, seen = _source(model), set()
    for index in (0, 1):
        for record in saver.layers[index].quantized:
            original = source[f"{record.name}.weight"]
            deq = dequantize_weight(record.weight_q, record.weight_scale, record.weight_offset)
            assert torch.all((deq - original.float()).abs() <= record.weight_scale / 2 + 1e-6), record.name
            seen.update({f"{record.name}.weight", f"{record.name}.bias"})
        for name, tensor in saver.layers[index].float_tensors.items():
            assert name not in seen and tensor.dtype == source[name].dtype and torch.equal(tensor, source[name])
            seen.add(name)
    for name, info in saver.outer.items():
        assert torch.equal(load_tensor(name, info), source[name]), name
        seen.add(name)
    assert set(source) <= seen
    attention = {"qwen3_moe": 4, "glm4_moe": 4, "deepseek_v3": 5}[family]
    shared = 0 if family == "qwen3_moe" else 3
    assert len(saver.layers[0].quantized) == attention + 3  # the dense layer
    sparse = {r.name for r in saver.layers[1].quantized}
    assert len(sparse) == attention + shared + 3 * DEMO_EXPERTS
    assert "model.layers.1.mlp.experts.7.down_proj" in sparse
    (entry,) = summary.errors["experts"]
    assert entry["layer"] == 1 and entry["experts"] == "model.layers.1.mlp.experts"
    assert len(entry["routed_tokens"]) == DEMO_EXPERTS


def test_preflight_sees_no_router_and_no_mtp_layer_as_linears(starving_model: Path) -> None:
    """Rules judged from checkpoint headers (group widths, asymmetric smoothing) see the experts, never
    the router or the MTP layer's tensors (copied as they are)."""
    from quantjob.worker.model.adapters import adapter_for
    from quantjob.worker.model.checkpoint import Checkpoint
    from quantjob.worker.model.model_config import read_model_config
    from quantjob.worker.preflight import _weight_shapes

    config = read_model_config(starving_model)
    shapes = _weight_shapes(Checkpoint(starving_model), adapter_for(config), config)
    assert "model.layers.1.mlp.experts.7.down_proj" in shapes
    assert not any(name.endswith("mlp.gate") or name.startswith("model.layers.3.") for name in shapes)


@pytest.mark.usefixtures("no_output_rules")
@pytest.mark.parametrize("mode", ["float", "quantized"])
def test_resume_of_a_moe_model_reports_the_same_expert_counts(
        mode: str, starving_model: Path, calib_jsonl: Callable[..., Path], memory_saver: Any, tmp_path: Path) -> None:
    """Replayed MoE layers count their routed tokens again (every local sample runs through the float
    layer), so a resumed run writes the same quant_errors.json and the same later records."""
    fresh = _run(starving_model, _config(STATIC), calib_jsonl(6), tmp_path / "out", memory_saver,
                 calibrate_all_experts=True, next_layer_input=mode)
    full = memory_saver.last
    memory_saver.options = {"committed": 2, "stored": {0: full.layers[0], 1: full.layers[1]}}
    resumed = _run(starving_model, _config(STATIC), calib_jsonl(6), tmp_path / "out", memory_saver,
                   calibrate_all_experts=True, next_layer_input=mode)
    again = memory_saver.last
    assert resumed.resumed_from == 2 and resumed.errors == fresh.errors
    assert [e["layer"] for e in resumed.errors["experts"]] == [1, 2]
    for a, b in zip(full.layers[2].quantized, again.layers[2].quantized, strict=True):
        assert a.name == b.name and torch.equal(a.weight_q, b.weight_q) and torch.equal(a.input_scale, b.input_scale)


def test_experts_laid_out_by_the_models_own_code_are_refused_with_the_fix() -> None:
    from quantjob.worker.model.experts import fused_experts_to_linears

    layer = torch.nn.Module()
    layer.mlp = torch.nn.Module()
    layer.mlp.experts = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    with pytest.raises(QuantJobError, match=r"mlp.experts: ModuleList .* without --trust_remote_code"):
        fused_experts_to_linears(layer, "mlp.experts")


def test_latent_attention_ov_fold_keeps_the_attention_function() -> None:
    """kv_b_proj's value rows divided by s, o_proj's columns multiplied by s (key rows untouched): the
    attention output is the same to float32 rounding; dividing the key rows too changes it."""
    import transformers

    from quantjob.families.deepseek_v3 import latent_attention_heads
    from quantjob.worker.loop.smoothing import divide_rows, ov_scales_mean, scale_columns
    from quantjob.worker.model.demo import demo_config

    config = demo_config("deepseek_v3", num_layers=2, hidden_size=64, num_heads=4)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    attention = model.model.layers[0].self_attn
    x = torch.randn(1, 12, 64)
    positions = model.model.rotary_emb(x, torch.arange(12).unsqueeze(0))
    heads = latent_attention_heads(config.to_dict())
    scales = torch.exp(torch.randn(heads.num_heads * heads.head_dim))
    consumer, source = ov_scales_mean(scales, heads)
    assert source.numel() == attention.kv_b_proj.out_features
    with torch.no_grad():
        before = attention(x, position_embeddings=positions, attention_mask=None)[0]
        kv_b, o = attention.kv_b_proj.weight.clone(), attention.o_proj.weight.clone()
        attention.kv_b_proj.weight.copy_(divide_rows(kv_b, source))
        attention.o_proj.weight.copy_(scale_columns(o, consumer))
        after = attention(x, position_embeddings=positions, attention_mask=None)[0]
        assert (after - before).abs().max() <= 1e-5 * before.abs().max()
        attention.kv_b_proj.weight.copy_(divide_rows(kv_b, torch.cat([consumer] * 2)[:source.numel()]))
        wrong = attention(x, position_embeddings=positions, attention_mask=None)[0]
        assert (wrong - before).abs().max() > 1e-2 * before.abs().max()


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_an_expert_sees_only_its_routed_tokens_unless_all_tokens(family: str) -> None:
    """Each expert's linears get exactly the tokens routed to it (no dense all-expert compute); with
    ``all_tokens`` they also see every token, and the block's output is the same bits."""
    import transformers

    from quantjob.worker.model.demo import demo_config
    from quantjob.worker.model.experts import count_routed, fused_experts_to_linears, set_all_tokens

    config = demo_config(family, num_layers=2, hidden_size=64)
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(torch.bfloat16)
    layer = model.model.layers[1]
    fused = layer.mlp.experts
    gate_up, down = fused.gate_up_proj.detach().clone(), fused.down_proj.detach().clone()
    experts = fused_experts_to_linears(layer, "mlp.experts").to(torch.bfloat16)
    width = gate_up.shape[1] // 2
    with torch.no_grad():
        for e in range(experts.num_experts):
            expert = experts.expert(e)
            expert.gate_proj.weight.copy_(gate_up[e, :width])
            expert.up_proj.weight.copy_(gate_up[e, width:])
            expert.down_proj.weight.copy_(down[e])
    rows: dict[int, int] = dict.fromkeys(range(experts.num_experts), 0)
    for e in range(experts.num_experts):
        experts.expert(e).down_proj.register_forward_pre_hook(
            lambda _m, args, _e=e: rows.__setitem__(_e, rows[_e] + args[0].shape[0]))
    x = torch.randn(1, 40, 64).to(torch.bfloat16)
    with torch.no_grad(), count_routed(layer) as counts:
        routed_out = layer.mlp(x)
    assert rows == dict(enumerate(counts["mlp.experts"].tolist())) and sum(rows.values()) == 40 * 2
    rows.update(dict.fromkeys(rows, 0))
    set_all_tokens(layer, True)
    with torch.no_grad():
        all_out = layer.mlp(x)
    assert all(rows[e] == counts["mlp.experts"][e] + 40 for e in rows)  # routed pass + statistics pass
    assert torch.equal(all_out, routed_out)
