"""FP8 block-scaled checkpoints: the dequantization against a reference on block edges, the config
check, the checkpoint's view (scales gone, weights float), and ``quantjob quantize`` of an FP8 model
giving the bytes of the same run on its dequantized float twin, on 1 and 2 ranks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from dp_runs import assert_same_tree, calibration, quantize_argv, run_quantize, start_quantize, tiny_model
from fp8_models import quantize_blocks, reference_dequant, write_fp8_model
from safetensors.torch import load_file, save_file

from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.checkpoint import Checkpoint
from quantjob.worker.model.fp8 import Fp8Blocks, dequantize_blocks, fp8_blocks, read_dequantized, scale_grid

CPU = torch.device("cpu")
# W8A8 dynamic with the down_proj of layers 0 and 1 kept float
MIXED = Path(__file__).resolve().parents[2] / "examples" / "configs" / "qwen3-8b-w8a8-dynamic.yaml"
FP8 = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


@pytest.mark.parametrize(("shape", "block"), [((300, 200), (128, 128)), ((129, 257), (128, 128)),
                                              ((128, 256), (128, 128)), ((1, 1), (128, 128)),
                                              ((70, 50), (32, 48))])
def test_dequantization_equals_the_reference_on_block_edges(shape: tuple[int, int], block: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    weight = torch.randn(shape, generator=generator) * 3
    fp8, scale = quantize_blocks(weight, block)
    scale.mul_(torch.rand(scale.shape, generator=generator) + 0.5)  # factors that are not exact powers
    got = dequantize_blocks(fp8, scale, block, torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.shape == shape
    assert torch.equal(got, reference_dequant(fp8, scale, block))
    # the last (partial) block uses the last factor, element by element
    assert scale_grid(shape, block) == tuple(scale.shape)
    last = (fp8[-1, -1].float() * scale[-1, -1]).to(torch.bfloat16)
    assert torch.equal(got[-1, -1], last)


@pytest.mark.parametrize("shape", [(300, 200), (129, 257), (1, 1), (7, 1000)])
def test_dequantization_into_the_memory_of_the_fp8_bytes_gives_the_same(shape: tuple[int, int]) -> None:
    fp8, scale = quantize_blocks(torch.randn(shape, generator=torch.Generator().manual_seed(1)), (128, 128))
    buffers: list[torch.Tensor] = []

    def read(into: torch.Tensor) -> torch.Tensor:
        buffers.append(into)
        into.copy_(fp8.view(torch.uint8).reshape(-1))
        return into.view(torch.float8_e4m3fn).view(shape)

    got = read_dequantized(read, shape, scale, (128, 128), torch.bfloat16)
    assert torch.equal(got, reference_dequant(fp8, scale, (128, 128)))
    assert buffers[0].untyped_storage().data_ptr() == got.untyped_storage().data_ptr()  # one buffer
    assert torch.equal(read_dequantized(read, shape, scale, (128, 128), torch.float32),
                       reference_dequant(fp8, scale, (128, 128), torch.float32))


def test_dequantization_rounds_once_from_float32() -> None:
    """1.5 x (1 + 3 * 2^-9) = 1.50879 in float32 -> bf16 1.5078125; rounding the factor to bf16 first
    (1.0078125) would give 1.515625."""
    fp8 = torch.tensor([[1.5]]).to(torch.float8_e4m3fn)
    scale = torch.tensor([[1.0 + 3 * 2.0 ** -9]], dtype=torch.float32)
    got = dequantize_blocks(fp8, scale, (128, 128), torch.bfloat16)[0, 0]
    assert got.item() == 1.5078125
    assert (fp8.float() * scale.to(torch.bfloat16).float()).to(torch.bfloat16).item() == 1.515625


def test_dequantization_refuses_a_scale_of_the_wrong_grid() -> None:
    fp8, scale = quantize_blocks(torch.randn(300, 200), (128, 128))
    with pytest.raises(ValueError, match=r"does not fit weight \[300, 200\].*expected \[3, 2\]"):
        dequantize_blocks(fp8, scale[:2], (128, 128), torch.bfloat16)


def test_config_declares_fp8_or_nothing() -> None:
    assert fp8_blocks({"model_type": "llama"}, "m/config.json") is None
    assert fp8_blocks({"quantization_config": FP8}, "m/config.json") == Fp8Blocks((128, 128))
    assert fp8_blocks({"text_config": {"quantization_config": {**FP8, "weight_block_size": [64, 32]}}},
                      "m/config.json") == Fp8Blocks((64, 32))


@pytest.mark.parametrize(("quant", "message"), [
    ({"quant_method": "gptq", "bits": 4}, (r"m/config.json: quantization_config.quant_method is 'gptq'.*already "
                                          r"quantized.*float \(bf16/fp16\) release")),
    ({"quant_method": "compressed-tensors"}, "quant_method is 'compressed-tensors'"),
    ({"quant_method": "awq"}, "quant_method is 'awq'"),
    ({**FP8, "weight_block_size": None}, r"weight_block_size is None.*per-tensor FP8 is not read"),
    ({**FP8, "weight_block_size": [128, 0]}, r"weight_block_size is \[128, 0\]"),
    ({**FP8, "fmt": "e5m2"}, "fmt is 'e5m2'"),
    ({**FP8, "activation_scheme": "static"}, "activation_scheme is 'static'"),
])
def test_config_refuses_other_quantizations(quant: dict[str, object], message: str) -> None:
    with pytest.raises(QuantJobError, match=message):
        fp8_blocks({"quantization_config": quant}, "m/config.json")


@pytest.fixture(scope="module")
def fp8_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(FP8 tiny llama with 32 x 48 blocks: every weight has partial edge blocks, its float twin).
    The lm_head is FP8 as well: a weight outside the decoder layers, kept float, which the saver
    writes as the checkpoint loads it (dequantized bf16, without its scales)."""
    root = tmp_path_factory.mktemp("fp8")
    source = tiny_model(root, "llama")
    write_fp8_model(source, root / "fp8", root / "reference", block=(32, 48), also=("lm_head.weight",))
    return root / "fp8", root / "reference"


def test_checkpoint_hides_the_scales_and_loads_weights_dequantized(fp8_pair: tuple[Path, Path]) -> None:
    fp8_dir, reference_dir = fp8_pair
    checkpoint = Checkpoint(fp8_dir, fp8_blocks(json.loads((fp8_dir / "config.json").read_text()), "config.json"))
    reference = load_file(reference_dir / "model.safetensors")
    assert set(checkpoint.tensors) == set(reference)
    assert not any(name.endswith("_scale_inv") for name in checkpoint.names_under("model.layers.0."))
    assert {info.dtype for info in checkpoint.tensors.values()} == {"BF16"}
    assert "model.layers.0.mlp.down_proj.weight_scale_inv" in checkpoint.stored
    info = checkpoint.tensors["model.layers.0.mlp.down_proj.weight"]
    assert info.stored_dtype == "F8_E4M3" and info.loaded_nbytes == 2 * info.nbytes
    loaded = checkpoint.load(checkpoint.names_under("model.layers.1."), CPU)
    for name, tensor in loaded.items():
        assert tensor.dtype == reference[name].dtype and torch.equal(tensor, reference[name]), name


def _rewrite(fp8_dir: Path, target: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    import shutil

    shutil.copytree(fp8_dir, target)
    tensors = load_file(target / "model.safetensors")
    change(tensors)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.pop("model.layers.0.mlp.up_proj.weight_scale_inv"),
     r"FP8 tensor 'model.layers.0.mlp.up_proj.weight' has no 'model.layers.0.mlp.up_proj.weight_scale_inv'"),
    (lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight_scale_inv", torch.ones(1, 1)),
     (r"'model.layers.0.mlp.up_proj.weight_scale_inv' is F32 \[1, 1\] for the weight \[128, 64\]; with "
     r"weight_block_size \[32, 48\] it must be F32 \[4, 2\]")),
    (lambda t: t.__setitem__("model.norm.weight_scale_inv", torch.ones(1, 1)),
     "'model.norm.weight_scale_inv' has no FP8 weight 'model.norm.weight'"),
])
def test_checkpoint_refuses_scales_that_do_not_fit(fp8_pair: tuple[Path, Path], tmp_path: Path,
                                                   change: Callable[[dict[str, torch.Tensor]], None],
                                                   message: str) -> None:
    target = _rewrite(fp8_pair[0], tmp_path / "bad", change)
    with pytest.raises(QuantJobError, match=message):
        Checkpoint(target, Fp8Blocks((32, 48)))


def test_an_fp8_checkpoint_quantizes_as_its_dequantized_twin_on_1_and_2_ranks(
        fp8_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """The output of the FP8 model equals, byte for byte, the output of the float model made of its
    dequantized weights (the float-kept lm_head and norms, the quantized linears, the error table);
    only config.json (its quantization_config dropped) and the provenance (other input files) differ.
    The FP8 lm_head (outside the decoder layers, kept float) is written dequantized, without scales."""
    fp8_dir, reference_dir = fp8_pair
    stored = load_file(fp8_dir / "model.safetensors")
    assert stored["lm_head.weight"].dtype == torch.float8_e4m3fn and "lm_head.weight_scale_inv" in stored
    calib = calibration(tmp_path)
    runs = {}
    for label, model, devices in (("fp8-1", fp8_dir, "cpu"), ("fp8-2", fp8_dir, "cpu:0,1"),
                                  ("ref-1", reference_dir, "cpu")):
        runs[label] = tmp_path / label
        argv = quantize_argv(model, runs[label], calib, devices, "w8a8_dynamic")
        run_quantize([*argv[:-6], "--config_path", str(MIXED), *argv[-4:]])
    assert_same_tree(runs["fp8-1"], runs["fp8-2"])
    config = json.loads((runs["fp8-1"] / "config.json").read_text())
    assert "quantization_config" not in config
    assert config == json.loads((reference_dir / "config.json").read_text())
    for file in sorted(runs["ref-1"].glob("*.safetensors")) + [runs["ref-1"] / "quant_errors.json"]:
        assert (runs["fp8-1"] / file.name).read_bytes() == file.read_bytes(), file.name
    saved = {}
    for file in runs["fp8-1"].glob("*.safetensors"):
        saved.update(load_file(file))
    assert not any(name.endswith("_scale_inv") for name in saved)
    assert saved["model.layers.0.mlp.up_proj.weight"].dtype == torch.int8
    reference = load_file(reference_dir / "model.safetensors")
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"):  # kept float
        assert saved[name].dtype == torch.bfloat16 and torch.equal(saved[name], reference[name]), name
    expected = reference_dequant(stored["lm_head.weight"], stored["lm_head.weight_scale_inv"], (32, 48))
    assert saved["lm_head.weight"].dtype == torch.bfloat16 and torch.equal(saved["lm_head.weight"], expected)


def test_an_already_quantized_model_is_refused_before_any_work(fp8_pair: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "gptq"
    shutil.copytree(fp8_pair[1], model)
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (model / "config.json").write_text(json.dumps(config))
    proc = start_quantize(quantize_argv(model, tmp_path / "out", calibration(tmp_path), "cpu:0,1", "w8a8_dynamic"))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out
    assert f"{model / 'config.json'}: quantization_config.quant_method is 'gptq'" in out
    assert not (tmp_path / "out").exists()


DEEPSEEK_MIXED = Path(__file__).resolve().parents[2] / "examples" / "configs" / "deepseek-v3-w8a8-mixed.yaml"


def test_deepseek_v3_as_published_quantizes_as_its_dequantized_twin_on_1_and_2_ranks(tmp_path: Path) -> None:
    """DeepSeek-V3 as it is published: MLA, a dense and two MoE layers (shared experts, grouped
    top-k, the router and its F32 ``e_score_correction_bias`` float), every linear of the decoder
    and of the MTP layer FP8 with block scales (32 x 48: partial edge blocks). The shipped mixed
    config gives, byte for byte, the output of the dequantized bf16 twin, on 1 and 2 ranks; the MTP
    layer is copied dequantized (bf16, no scales) and no FP8 ``quantization_config`` is left."""
    from quantjob.worker.model.demo import build_demo_model

    source = build_demo_model(tmp_path / "deepseek", family="deepseek_v3", num_layers=3, hidden_size=64,
                              intermediate_size=128, num_heads=4, num_kv_heads=4, seed=3)
    fp8_dir, reference_dir = tmp_path / "fp8", tmp_path / "reference"
    write_fp8_model(source, fp8_dir, reference_dir, block=(32, 48))
    stored = load_file(fp8_dir / "model.safetensors")
    assert stored["model.layers.3.mlp.experts.0.up_proj.weight"].dtype == torch.float8_e4m3fn  # the MTP layer
    assert stored["model.layers.3.eh_proj.weight"].dtype == torch.float8_e4m3fn
    assert stored["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    calib = calibration(tmp_path)
    runs = {}
    for label, model, devices in (("fp8-1", fp8_dir, "cpu"), ("fp8-2", fp8_dir, "cpu:0,1"),
                                  ("ref-1", reference_dir, "cpu")):
        runs[label] = tmp_path / label
        argv = quantize_argv(model, runs[label], calib, devices, "w8a8_dynamic")
        run_quantize([*argv[:-6], "--config_path", str(DEEPSEEK_MIXED), *argv[-4:]])
    assert_same_tree(runs["fp8-1"], runs["fp8-2"])
    assert "quantization_config" not in json.loads((runs["fp8-1"] / "config.json").read_text())
    for file in sorted(runs["ref-1"].glob("*.safetensors")) + [runs["ref-1"] / "quant_errors.json",
                                                               runs["ref-1"] / "quant_model_description.json"]:
        assert (runs["fp8-1"] / file.name).read_bytes() == file.read_bytes(), file.name
    saved: dict[str, torch.Tensor] = {}
    for file in runs["fp8-1"].glob("*.safetensors"):
        saved.update(load_file(file))
    assert not any(name.endswith("_scale_inv") for name in saved)
    assert saved["model.layers.1.mlp.experts.0.up_proj.weight"].dtype == torch.int8
    assert saved["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    reference = load_file(reference_dir / "model.safetensors")
    mtp = sorted(name for name in reference if name.startswith("model.layers.3."))
    assert "model.layers.3.mlp.experts.0.down_proj.weight" in mtp and "model.layers.3.eh_proj.weight" in mtp
    for name in mtp:
        assert saved[name].dtype == reference[name].dtype and torch.equal(saved[name], reference[name]), name
    assert saved["model.layers.3.eh_proj.weight"].dtype == torch.bfloat16
