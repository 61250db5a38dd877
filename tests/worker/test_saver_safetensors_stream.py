"""The streaming writer gives the safetensors library's bytes and files the library reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantjob.worker.model.safetensors_stream import StreamWriter, TensorSpec, library_order, write_file


def _mixed() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "model.layers.0.mlp.down_proj.weight": torch.randint(-128, 127, (5, 7), generator=gen).to(torch.int8),
        "model.layers.0.mlp.down_proj.deq_scale": torch.rand(5, generator=gen),
        "model.layers.0.mlp.down_proj.quant_bias": torch.randint(-99, 99, (5,), generator=gen).to(torch.int32),
        "model.layers.0.mlp.down_proj.deq_scale_fp16": torch.randint(0, 2**31 - 1, (5,), generator=gen),
        "model.norm.weight": torch.randn(3, generator=gen).to(torch.bfloat16),
        "a.half": torch.randn(2, 3, generator=gen).to(torch.float16),
        "b.flag": torch.tensor([True, False, True]),
        "c.scalar": torch.tensor(1.5),
        "d.empty": torch.zeros(0, 4),
    }


def test_bytes_equal_save_file(tmp_path: Path) -> None:
    tensors = _mixed()
    save_file(tensors, str(tmp_path / "lib.safetensors"))
    write_file(tmp_path / "ours.safetensors", tensors)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "lib.safetensors").read_bytes()


def test_safe_open_reads_streamed_file(tmp_path: Path) -> None:
    tensors = _mixed()
    specs = [TensorSpec.of(name, t) for name, t in tensors.items()]   # any order is a valid file
    with StreamWriter(tmp_path / "s.safetensors", specs) as writer:
        for spec in specs:
            writer.write(spec.name, tensors[spec.name])
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(tensors)
        for name, tensor in tensors.items():
            got = handle.get_tensor(name)
            assert got.dtype == tensor.dtype and torch.equal(got, tensor)


def test_writer_refuses_a_tensor_that_differs_from_its_spec(tmp_path: Path) -> None:
    specs = library_order([TensorSpec("x", "F32", (2,))])
    with pytest.raises(ValueError, match="expected"), StreamWriter(tmp_path / "bad.safetensors", specs) as writer:
        writer.write("x", torch.zeros(3))
    writer = StreamWriter(tmp_path / "short.safetensors", specs)
    with pytest.raises(ValueError, match="not written"):
        writer.close()
