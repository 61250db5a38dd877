"""bench/memory_estimate.py: its FP8 copy reads back through the checkpoint reader, and it parses the
estimate line the worker logs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench.memory_estimate import _ESTIMATE, write_fp8_copy
from quantjob.worker.model.checkpoint import Checkpoint
from quantjob.worker.model.demo import build_demo_model
from quantjob.worker.model.fp8 import fp8_blocks
from quantjob.worker.model.memory_estimate import RankPeak


def test_fp8_copy_reads_back_close_to_the_source(tmp_path: Path) -> None:
    source = build_demo_model(tmp_path / "src", num_layers=1, hidden_size=192, intermediate_size=320, num_heads=4,
                              num_kv_heads=2)
    copy = write_fp8_copy(source, tmp_path / "fp8")
    checkpoint = Checkpoint(copy, fp8_blocks(json.loads((copy / "config.json").read_text()), "config.json"))
    assert checkpoint.tensors["model.layers.0.mlp.up_proj.weight"].scale is not None   # 320 x 192: edge blocks
    original = load_file(source / "model.safetensors")
    for name, tensor in checkpoint.load(checkpoint.names_under("model.layers.0."), torch.device("cpu")).items():
        reference = original[name].float()
        error = (tensor.float() - reference).abs().max() / reference.abs().max()
        assert tensor.dtype == torch.bfloat16 and error < 0.07, name   # e4m3: 3 mantissa bits


def test_the_estimate_line_parses() -> None:
    peak = RankPeak(0, 4, 2048, 3 * 2 ** 30, 3, 2 ** 28, 2 ** 27, 2 ** 29, 2 ** 29)
    found = _ESTIMATE.search(f"memory estimate, largest rank: {peak.explain()}; allowed: 8.00 GiB (host)")
    assert found is not None and float(found["value"]) == round(peak.total / 2 ** 30, 2)
    assert found["unit"] == "GiB" and found["detail"].startswith("runtime 512.0 MiB")
    device = RankPeak(0, 4, 2048, 3 * 2 ** 30, 3, 2 ** 28, 2 ** 27, 2 ** 29, 2 ** 29, ahead_on_host=2 ** 31)
    found = _ESTIMATE.search(f"memory estimate, largest rank: {device.explain()}; allowed: 64.00 GiB (npu:0)")
    assert found is not None and float(found["value"]) == round(device.total / 2 ** 30, 2)
    assert "host memory 2.50 GiB = runtime + the layer read ahead 2.00 GiB" in found["detail"]
