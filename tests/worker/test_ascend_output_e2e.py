"""The files ``quantjob quantize`` writes, read back as vllm-ascend reads them.

For a tiny Qwen2 model (attention biases) quantized W8A8: every tensor has a description entry
and vice versa, dtypes and shapes follow ASCEND_FORMAT.md, and on the real calibration inputs of
layer 0 the integer path ``deq_scale * (W_q @ x_q + quant_bias)`` reproduces ``W x + b`` within the
quantization error, and equals the fake-quantized float computation up to float rounding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quantjob.cli import main
from quantjob.worker.loop.calibration import load_calibration

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _layer0_inputs(model: Path, calib: Path, samples: int) -> dict[str, torch.Tensor]:
    """Inputs of every linear of decoder layer 0 under a plain transformers forward of each sample."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
    hf.config._attn_implementation = "sdpa"
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in LINEARS}
    hooks = [hf.model.layers[0].get_submodule(name).register_forward_pre_hook(
        lambda _m, args, name=name: seen[name].append(args[0].reshape(-1, args[0].shape[-1])))
        for name in LINEARS]
    calibration = load_calibration(calib, model, samples=samples, max_length=64)
    with torch.no_grad():
        for ids in calibration.samples:
            hf(ids.unsqueeze(0))
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(rows) for name, rows in seen.items()}


@pytest.fixture(scope="module")
def quantized(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    model, calib = tiny_model("qwen2", 2), calib_jsonl(6)
    out = tmp_path_factory.mktemp("e2e") / "out"
    argv = ["quantize", "--model_path", str(model), "--save_path", str(out), "--device", "cpu",
            "--quant_type", "w8a8", "--calib_file", str(calib), "--calib_samples", "6", "--max_length", "64"]
    assert main(argv) == 0
    return model, calib, out


def test_description_and_weights_name_the_same_tensors(quantized: tuple[Path, Path, Path]) -> None:
    model, _, out = quantized
    description = json.loads((out / "quant_model_description.json").read_text())
    weights = load_file(out / "quant_model_weights.safetensors")
    described = {k for k, v in description.items() if isinstance(v, str) and k != "model_quant_type"
                 and k != "version"}
    assert described == set(weights)
    assert description["model_quant_type"] == "W8A8"
    source = load_file(model / "model.safetensors")
    for name, value in description.items():
        if value == "FLOAT":
            assert torch.equal(weights[name], source[name]), name  # float tensors byte-identical
    for linear in LINEARS:
        prefix = f"model.layers.0.{linear}"
        assert description[f"{prefix}.weight"] == "W8A8"
        out_features, in_features = source[f"{prefix}.weight"].shape
        expected = {"weight": (torch.int8, (out_features, in_features)),
                    "input_scale": (torch.bfloat16, (1,)), "input_offset": (torch.int8, (1,)),
                    "weight_scale": (torch.bfloat16, (out_features, 1)),
                    "weight_offset": (torch.bfloat16, (out_features, 1)),
                    "deq_scale": (torch.float32, (out_features,)), "quant_bias": (torch.int32, (out_features,))}
        for suffix, (dtype, shape) in expected.items():
            tensor = weights[f"{prefix}.{suffix}"]
            assert (tensor.dtype, tuple(tensor.shape)) == (dtype, shape), f"{prefix}.{suffix}"


def test_integer_path_reproduces_the_float_layer_on_calibration_inputs(
        quantized: tuple[Path, Path, Path]) -> None:
    model, calib, out = quantized
    weights = load_file(out / "quant_model_weights.safetensors")
    source = load_file(model / "model.safetensors")
    inputs = _layer0_inputs(model, calib, 6)
    for linear in LINEARS:
        prefix = f"model.layers.0.{linear}"
        x = inputs[linear].float()
        w = source[f"{prefix}.weight"].float()
        bias = source.get(f"{prefix}.bias")
        reference = x @ w.T + (bias.float() if bias is not None else 0.0)

        input_scale = weights[f"{prefix}.input_scale"].float()
        input_offset = weights[f"{prefix}.input_offset"].float()
        w_q = weights[f"{prefix}.weight"].float()
        deq = weights[f"{prefix}.deq_scale"].float()
        quant_bias = weights[f"{prefix}.quant_bias"].double()
        # static activation quantization as the NPU does it, observed range covers every input
        x_q = torch.clamp(torch.round(x / input_scale) + input_offset, -128, 127)
        integer = (deq.double() * (x_q.double() @ w_q.double().T + quant_bias)).float()

        weight_scale = weights[f"{prefix}.weight_scale"].float()
        fake = ((x_q - input_offset) * input_scale) @ (w_q * weight_scale).T
        fake = fake + (bias.float() if bias is not None else 0.0)
        # integer and fake-quant paths agree up to the rounding of b / deq_scale (half a step)
        assert torch.allclose(integer, fake, rtol=1e-4, atol=float(deq.max()) * 0.51 + 1e-5), linear
        # and both reproduce the float layer within the error the scales imply
        step_bound = (x.abs() @ (weight_scale / 2).expand_as(w).T
                      + (input_scale / 2) * w.abs().sum(dim=1) + float(deq.max()))
        assert torch.all((integer - reference).abs() <= step_bound * 1.05 + 1e-4), linear
        relative = (integer - reference).norm() / reference.norm()
        assert relative < 0.1, (linear, float(relative))
