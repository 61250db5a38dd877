"""``quantjob perplexity`` scores a MoE ascendv1 output with vllm-ascend's MoE arithmetic.

Tiny Qwen3-MoE, DeepSeek-V3 and GLM4-MoE demo models are quantized with the shipped configs
(``examples/configs/qwen3-30b-a3b-w8a8-mixed.yaml``, ``deepseek-v3-w8a8-mixed.yaml``: attention static
W8A8, experts W8A8_DYNAMIC, router float; ``glm4.5-w8a8-dynamic.yaml``); each output loads as vllm-ascend's MoE loader takes it (``ascend_reader``), each
rebuilt MoE layer runs its routed experts through ``AscendExperts`` (``w8a8_dynamic_moe``), and the
scores stay within quantization error of the float model's.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ascend_reader

from quantjob.api.rules_moe import moe_layout
from quantjob.cli import main
from quantjob.worker.model.adapters import adapter_for
from quantjob.worker.model.decoder import build_skeleton
from quantjob.worker.model.demo import corpus_text
from quantjob.worker.model.experts import ExpertLinears
from quantjob.worker.model.model_config import read_model_config
from quantjob.worker.readers.ascend_forward import AscendExperts, AscendLinear, AscendOutput, saved_layer
from quantjob.worker.readers.perplexity import evaluate_windows, make_windows

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
SHIPPED = {"qwen3_moe": "qwen3-30b-a3b-w8a8-mixed.yaml", "deepseek_v3": "deepseek-v3-w8a8-mixed.yaml",
           "glm4_moe": "glm4.5-w8a8-dynamic.yaml"}


@pytest.fixture(scope="module", params=list(SHIPPED))
def moe_output(request: pytest.FixtureRequest, tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model = tiny_model(request.param, 3)
    out = tmp_path_factory.mktemp("moe") / "out"
    argv = ["quantize", "--model_path", str(model), "--save_path", str(out), "--device", "cpu", "--config_path",
            str(CONFIGS / SHIPPED[request.param]), "--calib_file", str(calib_jsonl(8)), "--calib_samples", "8",
            "--max_length", "32"]
    assert main(argv) == 0
    return model, out


def _sparse(model: Path) -> tuple[int, ...]:
    config = read_model_config(model)
    layout = moe_layout(config, "model.layers", config["num_hidden_layers"])
    assert layout is not None
    return layout.sparse


def test_the_output_loads_as_vllm_ascend_loads_a_moe_layer(moe_output: tuple[Path, Path]) -> None:
    model, out = moe_output
    assert _sparse(model) == (1, 2)
    for layer in _sparse(model):
        assert ascend_reader.read_moe_layer(out, layer) == "W8A8_DYNAMIC"


def test_saved_moe_layers_run_the_experts_with_vllm_ascends_arithmetic(moe_output: tuple[Path, Path]) -> None:
    model, out = moe_output
    config = read_model_config(model)
    skeleton = build_skeleton(model, adapter_for(config, None), torch.device("cpu"), trust_remote_code=False)
    with saved_layer(skeleton, 1, AscendOutput(out), torch.device("cpu")) as layer:
        experts = layer.get_submodule("mlp.experts")
        count = config.get("n_routed_experts") or config.get("num_experts") or config["num_local_experts"]
        assert isinstance(experts, AscendExperts) and len(experts.experts) == count
        assert isinstance(layer.get_submodule("self_attn.o_proj"), AscendLinear)
        router = layer.get_submodule("mlp.gate")                                     # the router: the model's own,
        assert not isinstance(router, AscendLinear) and router.weight.is_floating_point()  # float as saved
    assert isinstance(skeleton.layers[1].get_submodule("mlp.experts"), ExpertLinears)  # restored


def test_perplexity_scores_the_moe_output_near_the_float_model(moe_output: tuple[Path, Path]) -> None:
    import transformers

    model, out = moe_output
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model))
    ids = list(tokenizer(corpus_text()[:3000], add_special_tokens=False)["input_ids"])[:240]
    windows = make_windows(ids, 48, None, 1)
    quantized, kind = evaluate_windows(out, windows, torch.device("cpu"))
    floats, float_kind = evaluate_windows(model, windows, torch.device("cpu"))
    assert (kind, float_kind) == ("ascendv1", "float")
    tokens = sum(w.scored for w in windows)
    ppl_q, ppl_f = (math.exp(math.fsum(nll) / tokens) for nll in (quantized, floats))
    assert all(math.isfinite(v) for v in quantized)
    assert quantized != floats                                  # the quantized arithmetic ran
    assert abs(ppl_q - ppl_f) / ppl_f < 0.05, (ppl_q, ppl_f)   # int8 everywhere: a small move


def test_a_compressed_tensors_moe_output_scores_as_its_ascendv1_twin(tiny_model: Callable[..., Path],
                                                                     calib_jsonl: Callable[..., Path],
                                                                     tmp_path: Path) -> None:
    """The same run saved both ways: read back layer by layer (compressed-tensors converted to the
    ascendv1 tensors), the two outputs give the same scores to the bit."""
    import transformers
    import yaml

    model = tiny_model("qwen3_moe", 3)
    config = yaml.safe_load((CONFIGS / SHIPPED["qwen3_moe"]).read_text())
    config["spec"]["save"] = [{"type": "ascendv1_saver"},
                              {"type": "compressed_tensors_saver", "save_directory": "ct"}]
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    argv = ["quantize", "--model_path", str(model), "--save_path", str(out), "--device", "cpu", "--config_path",
            str(path), "--calib_file", str(calib_jsonl(8)), "--calib_samples", "8", "--max_length", "32"]
    assert main(argv) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model))
    ids = list(tokenizer(corpus_text()[:2000], add_special_tokens=False)["input_ids"])[:94]
    windows = make_windows(ids, 48, None, 1)
    ascend, kind = evaluate_windows(out / "ascendv1", windows, torch.device("cpu"))
    compressed, ct_kind = evaluate_windows(out / "ct", windows, torch.device("cpu"))
    assert (kind, ct_kind) == ("ascendv1", "compressed-tensors")
    assert compressed == ascend


def test_a_static_w8a8_preset_on_a_moe_model_is_refused_before_any_work(tiny_model: Callable[..., Path],
                                                                        calib_jsonl: Callable[..., Path],
                                                                        tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["quantize", "--model_path", str(tiny_model("qwen3_moe", 3)), "--save_path", str(tmp_path / "out"),
            "--device", "cpu", "--quant_type", "w8a8", "--calib_file", str(calib_jsonl(8))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.layers.1.mlp.experts.0.gate_proj (a routed expert) would be static W8A8" in err
    assert "only int8 MoE scheme is W8A8_DYNAMIC" in err
    assert not (tmp_path / "out").exists()
