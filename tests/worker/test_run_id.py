"""The run id that a resumed run must match: what changes the output bytes changes it, and only that."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from quantjob.api.check import resolve
from quantjob.api.presets import preset
from quantjob.worker.loop.calibration import load_calibration
from quantjob.worker.loop.runner import WorkerJob, run_id_for
from quantjob.worker.model.checkpoint import FINGERPRINT_WINDOW_BYTES, FINGERPRINT_WINDOWS, Checkpoint, file_fingerprint
from quantjob.worker.model.model_config import read_model_config


def run_id(model: Path, calib: Path, *, quant_type: str = "w8a8", devices: int = 1, **options: object) -> str:
    config = resolve(preset(quant_type), devices).config
    assert config is not None
    job = WorkerJob(model_path=model, save_path=model.parent / "out", config=config, calib_file=calib,
                    calib_samples=4, max_length=64, **options)
    calibration = load_calibration(calib, model, samples=4, max_length=64)
    return run_id_for(job, read_model_config(model), Checkpoint(model), calibration)


@pytest.fixture
def model(tiny_model: Callable[..., Path]) -> Path:
    return tiny_model("llama", 2)


def test_the_runner_and_the_world_size_do_not_count(model: Path, calib_jsonl: Callable[..., Path]) -> None:
    calib = calib_jsonl(4)
    assert run_id(model, calib) == run_id(model, calib, devices=2)  # layer_wise vs dp_layer_wise


def test_the_model_path_does_not_count_but_its_weights_do(model: Path, tiny_model: Callable[..., Path],
                                                          calib_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    calib = calib_jsonl(4)
    copy = shutil.copytree(model, tmp_path / "copy")
    assert run_id(copy, calib) == run_id(model, calib)
    reseeded = tiny_model("llama", 2, seed=1)  # the same shapes, file sizes and headers, other weights
    assert sorted(p.stat().st_size for p in reseeded.glob("*.safetensors")) == \
        sorted(p.stat().st_size for p in model.glob("*.safetensors"))
    assert run_id(reseeded, calib) != run_id(model, calib)


def test_the_token_ids_count_not_the_file_bytes(model: Path, calib_jsonl: Callable[..., Path],
                                                tmp_path: Path) -> None:
    calib = calib_jsonl(4)
    ids = [t.tolist() for t in load_calibration(calib, model, samples=4, max_length=64).samples]
    pretokenized = tmp_path / "ids.jsonl"
    pretokenized.write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in ids))
    assert run_id(model, pretokenized) == run_id(model, calib)  # other bytes, the same ids
    ids[1][0] = (ids[1][0] + 1) % 100  # one token differs, as with another tokenizer
    pretokenized.write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in ids))
    assert run_id(model, pretokenized) != run_id(model, calib)


def test_the_spec_and_the_options_count(model: Path, calib_jsonl: Callable[..., Path]) -> None:
    calib = calib_jsonl(4)
    base = run_id(model, calib)
    assert run_id(model, calib, quant_type="w8a16") != base
    assert run_id(model, calib, next_layer_input="quantized") != base
    assert run_id(model, calib, error_samples=2) != base


def _safetensors(path: Path, data: bytes) -> Path:
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_a_large_file_is_fingerprinted_by_windows(tmp_path: Path) -> None:
    """Beyond 16 x 64 KiB only the windows are read: a change in one is seen, one between them is not
    (another checkpoint differs everywhere; --overwrite is the way to force a new run)."""
    size = 4 * FINGERPRINT_WINDOWS * FINGERPRINT_WINDOW_BYTES
    data = bytearray(size)
    base = file_fingerprint(_safetensors(tmp_path / "a.safetensors", bytes(data)))
    first = bytearray(data)
    first[0] = 1  # the first and the last data bytes are always in a window
    assert file_fingerprint(_safetensors(tmp_path / "b.safetensors", bytes(first))) != base
    last = bytearray(data)
    last[-1] = 1
    assert file_fingerprint(_safetensors(tmp_path / "c.safetensors", bytes(last))) != base
    between = bytearray(data)
    between[FINGERPRINT_WINDOW_BYTES + 7] = 1  # after the first window, before the second
    assert file_fingerprint(_safetensors(tmp_path / "d.safetensors", bytes(between))) == base
