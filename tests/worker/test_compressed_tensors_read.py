"""A compressed-tensors directory scores exactly as the ascendv1 output holding the same integers.

The compressed-tensors directories are written here by hand from an ascendv1 output, in the
library's layout (as llm-compressor saves it: ``int-quantized`` with ``weight`` int8, ``weight_scale``,
``input_scale``, ``input_zero_point``; ``pack-quantized`` with ``weight_packed`` / ``weight_shape``),
so ``quantjob perplexity`` must give the very same per-window NLL for both.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantjob.cli import main
from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.demo import corpus_text
from quantjob.worker.readers.compressed_tensors_read import CompressedTensorsOutput
from quantjob.worker.readers.perplexity import evaluate_windows, make_windows

STATIC = {"num_bits": 8, "type": "int", "strategy": "tensor", "dynamic": False, "symmetric": False}
DYNAMIC = {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True, "symmetric": True}
WEIGHTS = {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True, "group_size": None}


def _compressed_tensors_copy(model: Path, ascend: Path, out: Path, act: dict | None, packed: bool) -> Path:
    """The ascendv1 output ``ascend`` rewritten in compressed-tensors' layout under ``out``."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(model / name, out / name)
    description = json.loads((ascend / "quant_model_description.json").read_text())
    saved = load_file(ascend / "quant_model_weights.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in saved.items():
        module, _, suffix = name.rpartition(".")
        quantized = description.get(f"{module}.weight", "FLOAT") != "FLOAT"
        if not quantized:
            tensors[name] = tensor
        elif suffix == "weight" and packed:
            tensors[f"{module}.weight_packed"] = pack_to_int32(tensor, 8)
            tensors[f"{module}.weight_shape"] = torch.tensor(tensor.shape)
        elif suffix in ("weight", "weight_scale", "input_scale", "bias"):
            tensors[name] = tensor
        elif suffix == "input_offset":
            tensors[f"{module}.input_zero_point"] = tensor
    save_file(tensors, out / "model.safetensors")
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "pack-quantized" if packed else "int-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": WEIGHTS, "input_activations": act}},
        "ignore": ["lm_head"], "quantization_status": "compressed"}
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(("quant_type", "act", "packed"), [("w8a8", STATIC, False), ("w8a8_dynamic", DYNAMIC, False),
                                                          ("w8a16", None, True)])
def test_compressed_tensors_scores_as_the_same_ascendv1_output(
        tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path], tmp_path: Path,
        quant_type: str, act: dict | None, packed: bool) -> None:
    model = tiny_model("qwen2", 2)  # attention biases: quant_bias and the float bias both matter
    ascend = tmp_path / "ascend"
    assert main(["quantize", "--model_path", str(model), "--save_path", str(ascend), "--quant_type", quant_type,
                 "--calib_file", str(calib_jsonl(6)), "--calib_samples", "6", "--max_length", "48"]) == 0
    compressed = _compressed_tensors_copy(model, ascend, tmp_path / "ct", act, packed)
    import transformers

    ids = transformers.AutoTokenizer.from_pretrained(str(model))(corpus_text()[:1500])["input_ids"]
    windows = make_windows(ids, 40, None, 1)
    ours, kind = evaluate_windows(ascend, windows, torch.device("cpu"))
    theirs, ct_kind = evaluate_windows(compressed, windows, torch.device("cpu"))
    assert (kind, ct_kind) == ("ascendv1", "compressed-tensors")
    assert ours == theirs


def test_unreadable_compressed_tensors_are_refused(tiny_model: Callable[..., Path], tmp_path: Path) -> None:
    model = tiny_model("llama", 2)
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                                     "config_groups": {}}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantJobError, match="nvfp4-pack-quantized"):
        CompressedTensorsOutput(bad)
    config["quantization_config"].update(format="int-quantized", config_groups={
        "group_0": {"targets": ["Linear"], "weights": WEIGHTS,
                    "input_activations": {**STATIC, "strategy": "channel"}}})
    (bad / "config.json").write_text(json.dumps(config))
    shutil.copy(model / "model.safetensors", bad / "model.safetensors")
    output = CompressedTensorsOutput(bad)
    own = {"weight": torch.zeros(4, 4, dtype=torch.int8), "weight_scale": torch.ones(4, 1, dtype=torch.bfloat16)}
    with pytest.raises(QuantJobError, match="no ascendv1 counterpart"):
        output.record("model.layers.0.mlp.up_proj", own)
    with pytest.raises(QuantJobError, match="save_compressed=True"):
        output.record("model.layers.0.mlp.up_proj", {**own, "weight": torch.zeros(4, 4)})


@pytest.mark.parametrize("quant_type", ["w8a8", "w8a8_dynamic", "w8a16"])
def test_quantjob_compressed_tensors_saver_scores_as_its_ascendv1_output(
        tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path], tmp_path: Path, quant_type: str) -> None:
    """The same run saved by both savers: the compressed-tensors output, read back, is the ascendv1 one."""
    import transformers
    import yaml

    from quantjob.api.presets import preset_dict

    model = tiny_model("qwen2", 2)
    outputs = {}
    for saver in ("ascendv1_saver", "compressed_tensors_saver"):
        document = preset_dict(quant_type)
        document["spec"]["save"] = [{"type": saver}]
        config = tmp_path / f"{saver}.yaml"
        config.write_text(yaml.safe_dump(document))
        outputs[saver] = tmp_path / saver
        assert main(["quantize", "--model_path", str(model), "--save_path", str(outputs[saver]), "--config_path",
                     str(config), "--calib_file", str(calib_jsonl(6)), "--calib_samples", "6",
                     "--max_length", "48"]) == 0
    ids = transformers.AutoTokenizer.from_pretrained(str(model))(corpus_text()[:1500])["input_ids"]
    windows = make_windows(ids, 40, None, 1)
    ours, _ = evaluate_windows(outputs["ascendv1_saver"], windows, torch.device("cpu"))
    theirs, kind = evaluate_windows(outputs["compressed_tensors_saver"], windows, torch.device("cpu"))
    assert kind == "compressed-tensors"
    assert ours == theirs
