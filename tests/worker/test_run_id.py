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


# Run ids as the code gave them before the identity options came from the run options table
# (``Option.identity``): a resumed run of an older output must find the same id, so these never
# change. Everything but the options is held fixed (an explicit config, a model config, no weight
# files, a calibration digest), so only how the options enter the hashed text is pinned.
_PINNED_CONFIG = {"apiversion": "modelslim_v1", "spec": {
    "process": [{"type": "linear_quant", "qconfig": {
        "act": {"scope": "per_tensor", "dtype": "int8", "symmetric": False, "method": "minmax"},
        "weight": {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}}}],
    "save": [{"type": "ascendv1_saver"}]}}
_PINNED_IDS = {
    "defaults": ({}, "0f0168ee73e0d233da5dea7507f13a8d"),
    "calibration": ({"calib_samples": 16, "max_length": 128}, "df5ee852c6cd834ee463ed91c15f5cfa"),
    "next_layer_input": ({"next_layer_input": "quantized"}, "9e7ec5c361ea76b1cdff3f0572471644"),
    "error_samples": ({"error_samples": 2}, "f096b2d1338cc5addb09eda8d8182fc9"),
    "model_type": ({"model_type": "llama"}, "ccd24cf38e56a1e4e03156008a79fcc4"),
    "calibrate_all_experts": ({"calibrate_all_experts": True}, "1ef50ef9c243dc65e862700143bd1890"),
    # where to read and write, and what may run, do not decide the output bytes
    "not_identity": ({"trust_remote_code": True, "overwrite": True, "calib_file": Path("/elsewhere/c.jsonl"),
                      "save_path": Path("/other"), "model_path": Path("/moved")}, "0f0168ee73e0d233da5dea7507f13a8d"),
}


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("case", sorted(_PINNED_IDS))
def test_run_ids_of_earlier_runs_do_not_change(case: str, devices: int) -> None:
    from types import SimpleNamespace

    from quantjob.api.modelslim import ModelslimConfig

    config = resolve(ModelslimConfig.model_validate(_PINNED_CONFIG), devices).config
    assert config is not None
    options, expected = _PINNED_IDS[case]
    job = WorkerJob(**{"model_path": Path("/m"), "save_path": Path("/o"), "config": config, **options})
    model_config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}
    no_weights, calibration = SimpleNamespace(files=[]), SimpleNamespace(digest="d" * 64)
    assert run_id_for(job, model_config, no_weights, calibration) == expected  # type: ignore[arg-type]


def test_a_new_identity_option_changes_no_earlier_run_id() -> None:
    """An option that changes the output's bytes is one field with ``Option(identity=...)``: the run
    id hashes it when it is set, and the id of a run that leaves it at its default (every run
    written before the option existed) stays what it was."""
    from types import SimpleNamespace
    from typing import Annotated

    from quantjob.api.modelslim import ModelslimConfig
    from quantjob.api.run_options import Option, identity_options

    class WithFakeIdentity(WorkerJob):
        fake_bits: Annotated[int, Option("a fake option", identity="unless_default")] = 8

    config = resolve(ModelslimConfig.model_validate(_PINNED_CONFIG), 1).config
    assert config is not None
    no_weights, calibration = SimpleNamespace(files=[]), SimpleNamespace(digest="d" * 64)
    model_config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}

    def run_id_with(**options: object) -> str:
        job = WithFakeIdentity(model_path=Path("/m"), save_path=Path("/o"), config=config, **options)
        return run_id_for(job, model_config, no_weights, calibration)  # type: ignore[arg-type]

    assert "fake_bits" in identity_options(WithFakeIdentity)  # also recorded in the provenance
    assert run_id_with() == _PINNED_IDS["defaults"][1]
    assert run_id_with(fake_bits=4) != run_id_with()
    assert run_id_with(fake_bits=4, next_layer_input="quantized") != run_id_with(fake_bits=4)
