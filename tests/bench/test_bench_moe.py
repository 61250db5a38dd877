"""bench_moe's own arithmetic, without running the benchmark: the memory target's units come from
the checkpoint's headers (the largest decoder layer and the embedding), and the quantize command
takes the shipped W8A8 mixed config unless a preset is asked for."""

from __future__ import annotations

from pathlib import Path

import torch

from bench import bench_moe
from bench.runs import QuantizeJob
from quantjob.worker.model.demo import build_demo_model


def test_layer_and_embedding_bytes_are_the_headers_sums(tmp_path: Path) -> None:
    model = tmp_path / "moe"
    build_demo_model(model, family="deepseek_v3", num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4,
                     num_kv_heads=4, vocab_size=256, dtype=torch.bfloat16, experts=(8, 2, 1))
    from safetensors.torch import load_file

    tensors = {name: t for file in model.glob("*.safetensors") for name, t in load_file(file).items()}
    per_layer = [sum(t.numel() * t.element_size() for name, t in tensors.items()
                     if name.startswith(f"model.layers.{i}.")) for i in range(2)]
    layer, embedding = bench_moe.layer_and_embedding_bytes(model, 2)
    assert layer == max(per_layer) and layer > 0
    assert embedding == tensors["model.embed_tokens.weight"].numel() * 2
    assert sum(bench_moe.header_bytes(model).values()) == sum(t.numel() * t.element_size() for t in tensors.values())


def test_quantize_takes_the_mixed_config_or_a_preset(tmp_path: Path) -> None:
    assert bench_moe.MIXED_CONFIG.is_file()
    mixed = QuantizeJob(tmp_path, tmp_path / "c.jsonl", 4, 8, config_path=bench_moe.MIXED_CONFIG).argv(tmp_path / "o")
    assert "--config_path" in mixed and str(bench_moe.MIXED_CONFIG) in mixed and "--quant_type" not in mixed
    preset = QuantizeJob(tmp_path, tmp_path / "c.jsonl", 4, 8, quant_type="w8a8_dynamic").argv(tmp_path / "o")
    assert preset[preset.index("--quant_type") + 1] == "w8a8_dynamic" and "--config_path" not in preset
