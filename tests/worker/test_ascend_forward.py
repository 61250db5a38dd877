"""vllm-ascend's arithmetic on saved ascendv1 tensors (``quantjob.worker.readers.ascend_forward``).

The plain functions against values worked out by hand (in the comments), then one decoder layer
rebuilt from a real output directory: every quantized linear becomes an ``AscendLinear``, a saved
norm bias is added after the norm, a ``.bias`` for a linear without one is dropped as vLLM drops
it, and the skeleton comes back untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantjob.cli import main
from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.adapters import adapter_for
from quantjob.worker.model.decoder import build_skeleton, layer_forward
from quantjob.worker.model.model_config import read_model_config
from quantjob.worker.readers.ascend_forward import (
    AscendLinear,
    AscendOutput,
    input_scale_reciprocal,
    integer_matmul,
    quantize_per_token,
    quantize_static,
    saved_layer,
    w8a8_dynamic_linear,
    w8a8_static_linear,
    weight_only_linear,
)
from quantjob.worker.savers.ascend_tensors import deq_scale_for

BF16, FP16 = torch.bfloat16, torch.float16
SCALE = torch.tensor([0.3], dtype=BF16)           # held as 0.30078125 (77/256, exact in fp16 too)
X = torch.tensor([[13.375, -0.75]], dtype=BF16)
W = torch.tensor([[2, -3], [127, -128]], dtype=torch.int8)
OFFSET = torch.tensor([-5], dtype=torch.int8)


def test_reciprocal_is_rounded_to_the_model_dtype() -> None:
    # 1 / 0.30078125 = 3.32467...; bf16 neighbours 3.3125 and 3.328125, fp16 neighbours 3.32421875 and 3.326171875
    assert SCALE.item() == 0.30078125
    assert input_scale_reciprocal(SCALE).item() == 3.328125
    assert input_scale_reciprocal(SCALE.to(FP16)).item() == 3.32421875
    assert input_scale_reciprocal(SCALE).dtype == BF16


def test_static_quantization_multiplies_by_the_rounded_reciprocal() -> None:
    # 13.375 * 3.328125 = 44.5137 -> 45 - 5 = 40, while 13.375 / 0.30078125 = 44.4675 -> 44 - 5 = 39
    # -0.75 * 3.328125 - 5 = -7.496 -> -7; saturation at both ends
    x = torch.tensor([[13.375, -0.75, 100.0, -100.0, 0.0]], dtype=BF16)
    assert quantize_static(x, SCALE, OFFSET).tolist() == [[40, -7, 127, -128, -5]]
    assert quantize_static(x, SCALE, OFFSET, divide=True).tolist() == [[39, -7, 127, -128, -5]]
    assert quantize_static(x, SCALE, OFFSET).dtype == torch.int8


def test_integer_matmul_is_exact_past_float32_integers() -> None:
    # 2048 products of (-128)(-128) plus one of 1 * 1: 2^25 + 1, which float32 cannot hold
    x = torch.tensor([[-128] * 2048 + [1]], dtype=torch.int8)
    w = x.clone()
    assert int(integer_matmul(x, w).item()) == 2**25 + 1
    rng = torch.Generator().manual_seed(0)
    xs = torch.randint(-128, 128, (5, 3000), generator=rng, dtype=torch.int8)
    ws = torch.randint(-128, 128, (7, 3000), generator=rng, dtype=torch.int8)
    exact = (xs.long().unsqueeze(1) * ws.long().unsqueeze(0)).sum(-1)
    assert torch.equal(integer_matmul(xs, ws).long(), exact)


@pytest.mark.parametrize(("dtype", "expected"), [
    # bf16: x_q = [40, -7]; x_q W^T = [80 + 21, 5080 + 896] = [101, 5976]; + quant_bias [7, -100] = [108, 5876];
    # * deq_scale [0.01, 0.5] = [1.08, 2938] -> bf16 [1.078125, 2944]
    (BF16, [1.078125, 2944.0]),
    # fp16: reciprocal 3.32421875 gives x_q = [39, -7]: [78 + 21, 4953 + 896] + [7, -100] = [106, 5749]
    # * [0.01, 0.5] = [1.06, 2874.5] -> fp16 [1.0595703125, 2874] (deq_scale saved as int64 bits)
    (FP16, [1.0595703125, 2874.0]),
])
def test_w8a8_static_linear(dtype: torch.dtype, expected: list[float]) -> None:
    deq = deq_scale_for(torch.tensor([0.01, 0.5]), dtype)
    assert deq.dtype == (torch.float32 if dtype == BF16 else torch.int64)
    out = w8a8_static_linear(X.to(dtype), W, SCALE.to(dtype), OFFSET, deq, torch.tensor([7, -100], dtype=torch.int32))
    assert out.dtype == dtype
    assert out.tolist() == [expected]


def test_per_token_dynamic_quantization_and_linear() -> None:
    # max |x| = 2: scale 2/127; x / scale = [79.375, -127, 31.75] -> [79, -127, 32]
    x = torch.tensor([[1.25, -2.0, 0.5], [0.0, 0.0, 0.0]], dtype=BF16)
    q, scale = quantize_per_token(x)
    assert q.tolist() == [[79, -127, 32], [0, 0, 0]]
    assert scale[0, 0].item() == pytest.approx(2 / 127) and scale[1, 0].item() == 0.0
    # [79, -127, 32] . [1, 2, 3] = -79; * weight_scale 0.5 * 2/127 + bias 0.25 = -0.37205 -> bf16 -0.37109375
    out = w8a8_dynamic_linear(x, torch.tensor([[1, 2, 3]], dtype=torch.int8), torch.tensor([[0.5]], dtype=BF16),
                              torch.tensor([0.25], dtype=BF16))
    assert out.tolist() == [[-0.37109375], [0.25]]


def test_weight_only_adds_the_saved_offset() -> None:
    # (q + offset) * scale: [(10 + 2) * 0.5, (-4 + 2) * 0.5] = [6, -1]; [1.5, 3] . [6, -1] + 0.5 = 6.5
    # (subtracting the offset would give [4, -3] and -2.5)
    out = weight_only_linear(torch.tensor([[1.5, 3.0]], dtype=BF16), torch.tensor([[10, -4]], dtype=torch.int8),
                             torch.tensor([[0.5]], dtype=BF16), torch.tensor([[2.0]], dtype=BF16),
                             torch.tensor([0.5], dtype=BF16))
    assert out.tolist() == [[6.5]]
    # per group of 2 inputs: [1, 2, (3 + 1) * 0.5, (4 + 1) * 0.5] = [1, 2, 2, 2.5], summed 7.5
    grouped = weight_only_linear(torch.ones(1, 4, dtype=BF16), torch.tensor([[1, 2, 3, 4]], dtype=torch.int8),
                                 torch.tensor([[1.0, 0.5]], dtype=BF16), torch.tensor([[0.0, 1.0]], dtype=BF16))
    assert grouped.tolist() == [[7.5]]


def test_ascend_linear_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(QuantJobError, match=r"needs m\.deq_scale, m\.quant_bias"):
        AscendLinear("m", "W8A8", {"weight": W, "input_scale": SCALE, "input_offset": OFFSET})
    with pytest.raises(QuantJobError, match="has no emulation"):
        AscendLinear("m", "W4A4", {"weight": W})
    with pytest.raises(QuantJobError, match="int8"):
        AscendLinear("m", "W8A16", {"weight": W.float(), "weight_scale": SCALE, "weight_offset": SCALE})


def _quantized(model: Path, calib: Path, out: Path, quant_type: str) -> Path:
    argv = ["quantize", "--model_path", str(model), "--save_path", str(out), "--device", "cpu",
            "--quant_type", quant_type, "--calib_file", str(calib), "--calib_samples", "4", "--max_length", "32"]
    assert main(argv) == 0
    return out


def _add_tensors(out: Path, extra: dict[str, torch.Tensor]) -> None:
    """Write ``extra`` into the output's weight file and description as FLOAT tensors."""
    weights = out / "quant_model_weights.safetensors"
    tensors = {**load_file(weights), **extra}
    save_file(tensors, weights)
    description = json.loads((out / "quant_model_description.json").read_text())
    description.update({name: "FLOAT" for name in extra})
    (out / "quant_model_description.json").write_text(json.dumps(description))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_saved_layer_swaps_quantized_linears_and_restores_the_skeleton(
        family: str, tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    model = tiny_model(family, 2)
    out = _quantized(model, calib_jsonl(4), tmp_path / "out", "w8a16")
    config = read_model_config(model)
    skeleton = build_skeleton(model, adapter_for(config), torch.device("cpu"), trust_remote_code=False)
    output = AscendOutput(out)
    hidden = torch.randn(1, 5, config["hidden_size"], generator=torch.Generator().manual_seed(1)).to(BF16)
    with torch.inference_mode(), saved_layer(skeleton, 1, output, torch.device("cpu")) as layer:
        linears = {name: m for name, m in layer.named_modules() if isinstance(m, AscendLinear)}
        assert sorted(linears) == sorted(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
        assert {m.scheme for m in linears.values()} == {"W8A16"}
        # Qwen2's q/k/v have biases and keep them; Llama's linears have none
        assert (linears["self_attn.q_proj"].bias_tensor is not None) == (family == "qwen2")
        y = layer_forward(skeleton, 1, layer, hidden)
    assert y.shape == hidden.shape and torch.isfinite(y.float()).all()
    layer = skeleton.layers[1]
    assert all(p.is_meta for p in layer.parameters())
    assert not any(isinstance(m, AscendLinear) for m in layer.modules())


def test_saved_norm_bias_is_added_and_a_new_linear_bias_is_dropped(
        tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    model = tiny_model("llama", 2)
    out = _quantized(model, calib_jsonl(4), tmp_path / "out", "w8a16")
    config = read_model_config(model)
    skeleton = build_skeleton(model, adapter_for(config), torch.device("cpu"), trust_remote_code=False)
    hidden = torch.randn(1, 6, config["hidden_size"], generator=torch.Generator().manual_seed(2)).to(BF16)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        with torch.inference_mode(), saved_layer(skeleton, 0, AscendOutput(out), torch.device("cpu")) as layer:
            handle = layer.self_attn.q_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
            y = layer_forward(skeleton, 0, layer, hidden)
            handle.remove()
        return seen[0], y

    q_input, _ = run()
    _add_tensors(out, {"model.layers.0.mlp.down_proj.bias": torch.full((config["hidden_size"],), 3.0, dtype=BF16)})
    _, dropped = run()
    bias = torch.linspace(-1, 1, config["hidden_size"]).to(BF16)
    _, before = run()
    _add_tensors(out, {"model.layers.0.input_layernorm.bias": bias})
    shifted_input, _ = run()
    assert torch.equal(shifted_input, q_input + bias)  # the norm's output, plus the bias, in bf16
    assert torch.equal(dropped, before)                # down_proj has no bias in the model: not used


def test_output_that_does_not_match_the_model_is_refused(
        tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    model = tiny_model("llama", 2)
    out = _quantized(model, calib_jsonl(4), tmp_path / "out", "w8a8")
    tensors = load_file(out / "quant_model_weights.safetensors")
    del tensors["model.layers.1.mlp.up_proj.deq_scale"]
    save_file(tensors, out / "quant_model_weights.safetensors")
    description = json.loads((out / "quant_model_description.json").read_text())
    del description["model.layers.1.mlp.up_proj.deq_scale"]
    (out / "quant_model_description.json").write_text(json.dumps(description))
    skeleton = build_skeleton(model, adapter_for(read_model_config(model)), torch.device("cpu"),
                              trust_remote_code=False)
    with (pytest.raises(QuantJobError, match=r"model\.layers\.1\.mlp\.up_proj\.deq_scale"),
          saved_layer(skeleton, 1, AscendOutput(out), torch.device("cpu"))):
        pass
    assert all(p.is_meta for p in skeleton.layers[1].parameters())
    (out / "quant_model_description.json").write_text("{")
    with pytest.raises(QuantJobError, match="not JSON"):
        AscendOutput(out)
    with pytest.raises(QuantJobError, match="is missing"):
        AscendOutput(tmp_path)
