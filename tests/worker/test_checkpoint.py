"""Checkpoint: single and sharded files, byte-exact loads, header validation, the prefetcher."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.checkpoint import Checkpoint, Prefetcher, read_header

CPU = torch.device("cpu")


def _source(model: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(model.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.mark.parametrize("sharded", [False, True])
def test_loads_every_tensor_byte_exact(tiny_model: Callable[..., Path], sharded: bool) -> None:
    model = tiny_model("qwen2", 2, **({"max_shard_bytes": 60_000} if sharded else {}))
    assert (model / "model.safetensors.index.json").exists() == sharded
    checkpoint = Checkpoint(model)
    source = _source(model)
    assert set(checkpoint.tensors) == set(source)
    assert len(checkpoint.files) == (len(list(model.glob("*.safetensors"))))
    names = checkpoint.names_under("model.layers.1.")
    assert names and all(n.startswith("model.layers.1.") for n in names)
    loaded = checkpoint.load(names, CPU)
    for name in names:
        assert loaded[name].dtype == source[name].dtype and torch.equal(loaded[name], source[name])


def test_prefetcher_returns_the_same_tensors(tiny_model: Callable[..., Path]) -> None:
    checkpoint = Checkpoint(tiny_model("llama", 2))
    names = checkpoint.names_under("model.layers.0.")
    prefetcher = Prefetcher(checkpoint, CPU)
    try:
        prefetcher.submit("l0", names)
        got = prefetcher.take("l0", names)
        direct = checkpoint.load(names, CPU)
        assert all(torch.equal(got[n], direct[n]) for n in names)
        assert set(prefetcher.take("l0-again", names)) == set(names)  # nothing submitted: loads now
    finally:
        prefetcher.close()


def test_prefetcher_reads_ahead_into_host_memory_for_an_accelerator(tiny_model: Callable[..., Path]) -> None:
    """For a device other than cpu the layer read ahead waits in host memory (checked there) and
    reaches the device only when taken. The meta device stands in for an accelerator."""
    checkpoint = Checkpoint(tiny_model("llama", 2))
    names = checkpoint.names_under("model.layers.0.")
    seen: list[str] = []
    prefetcher = Prefetcher(checkpoint, torch.device("meta"),
                            verify=lambda _key, tensors: seen.extend(t.device.type for t in tensors.values()))
    try:
        prefetcher.submit("l0", names)
        got = prefetcher.take("l0", names)
    finally:
        prefetcher.close()
    assert seen and set(seen) == {"cpu"}
    assert set(got) == set(names) and {t.device.type for t in got.values()} == {"meta"}


def _copy(model: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model, target)
    return target


def test_truncated_file_names_the_file(tiny_model: Callable[..., Path], tmp_path: Path) -> None:
    model = _copy(tiny_model("llama", 2), tmp_path)
    file = model / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 100])
    with pytest.raises(QuantJobError, match="truncated") as info:
        Checkpoint(model)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("payload", [b"", b"\x01\x02", b"\xff" * 8 + b"{}", b"\x04\x00\x00\x00\x00\x00\x00\x00nope"])
def test_corrupt_headers(tmp_path: Path, payload: bytes) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(payload)
    with pytest.raises(QuantJobError, match="model.safetensors"):
        read_header(file)


def test_bad_header_entry(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 6]}}).encode()
    file = tmp_path / "x.safetensors"
    file.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(QuantJobError, match="corrupt header entry for tensor 'w'"):
        read_header(file)


def test_missing_shard_and_missing_weights(tiny_model: Callable[..., Path], tmp_path: Path) -> None:
    model = _copy(tiny_model("qwen2", 2, max_shard_bytes=60_000), tmp_path)
    shard = min(model.glob("model-*.safetensors"))
    shard.unlink()
    with pytest.raises(QuantJobError, match=shard.name):
        Checkpoint(model)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QuantJobError, match="no model.safetensors"):
        Checkpoint(empty)


def _f32(begin: int, end: int) -> dict[str, object]:
    return {"dtype": "F32", "shape": [(end - begin) // 4], "data_offsets": [begin, end]}


@pytest.mark.parametrize(("entries", "data_bytes", "fragment"), [
    ({"a": _f32(0, 8), "b": _f32(4, 12)}, 16, "'b' (data bytes 4..12) overlaps 'a'"),
    ({"a": _f32(0, 8), "b": _f32(0, 8)}, 8, "overlaps"),                      # two names, one range
    ({"a": _f32(0, 16), "b": _f32(4, 12)}, 16, "overlaps"),                   # one inside another
    ({"a": _f32(0, 8), "b": _f32(12, 20)}, 20, "gap of 4 bytes after 'a'"),
    ({"a": _f32(8, 16)}, 16, "gap of 8 bytes after the header"),
    ({"a": _f32(0, 8)}, 16, "cover 8 of 16 data bytes"),                      # trailing bytes
    ({"b": _f32(8, 16), "a": _f32(0, 8)}, 16, None),                          # JSON order is free
    ({"e": _f32(0, 0), "a": _f32(0, 8)}, 8, None),                            # an empty tensor
])
def test_tensor_ranges_must_tile_the_data_as_the_library_requires(
        tmp_path: Path, entries: dict[str, object], data_bytes: int, fragment: str | None) -> None:
    """Overlapping or out-of-order offsets were accepted and read one tensor's bytes as another's."""
    from safetensors import SafetensorError, safe_open

    header = json.dumps(entries).encode()
    header += b" " * (-len(header) % 8)
    file = tmp_path / "x.safetensors"
    file.write_bytes(len(header).to_bytes(8, "little") + header + bytes(range(data_bytes)))
    try:
        with safe_open(str(file), framework="pt") as handle:
            library = set(handle.keys())
    except SafetensorError:
        library = None
    if fragment is None:
        assert set(read_header(file)) == library == set(entries)
    else:
        with pytest.raises(QuantJobError, match=re.escape(fragment)):
            read_header(file)
        assert library is None  # the library refuses it too
