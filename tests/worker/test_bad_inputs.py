"""Bad input through the command line: one ``quantjob: error:`` line naming the file and the fix,
exit code 1, and nothing written at the save path."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from quantjob.cli import main


def _quantize(model: Path, out: Path, calib: Path | None, *extra: str) -> list[str]:
    argv = ["quantize", "--model_path", str(model), "--save_path", str(out), "--quant_type", "w8a8",
            "--calib_samples", "4", "--max_length", "32", *extra]
    return argv + (["--calib_file", str(calib)] if calib else [])


def _copy(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "model"))


def _expect_error(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    assert main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("quantjob:")]
    assert len(lines) == 1 and lines[0].startswith("quantjob: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def model(tiny_model: Callable[..., Path]) -> Path:
    return tiny_model("llama", 2)


def test_missing_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    _expect_error(_quantize(tmp_path / "nope", out, None), capsys, str(tmp_path / "nope"), "--model_path")
    assert not out.exists()


def test_missing_and_broken_config_json(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy, out = _copy(model, tmp_path), tmp_path / "out"
    (copy / "config.json").write_text("{not json")
    _expect_error(_quantize(copy, out, None), capsys, str(copy / "config.json"))
    (copy / "config.json").unlink()
    _expect_error(_quantize(copy, out, None), capsys, str(copy / "config.json"), "missing")
    assert not out.exists()


def test_unsupported_architecture(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy, out = _copy(model, tmp_path), tmp_path / "out"
    config = json.loads((copy / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (copy / "config.json").write_text(json.dumps(config))
    _expect_error(_quantize(copy, out, None), capsys, "config.json", "gpt2", "llama, mistral, qwen2, qwen3")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    copy, out = _copy(model, tmp_path), tmp_path / "out"
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" + data[8:])
    _expect_error(_quantize(copy, out, None), capsys, str(weights))
    assert not out.exists()


@pytest.mark.parametrize(("text", "needle"), [("", "no usable text"), ('{"text": "  "}\n', "no usable text"),
                                              ("{broken\n", "not valid JSON")])
def test_bad_calibration(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                         needle: str) -> None:
    calib, out = tmp_path / "calib.jsonl", tmp_path / "out"
    calib.write_text(text)
    _expect_error(_quantize(model, out, calib), capsys, str(calib), needle)
    assert not out.exists()


def test_save_path_is_a_file(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.write_text("x")
    _expect_error(_quantize(model, out, None), capsys, str(out), "not a directory")
    _expect_error(_quantize(model, out / "sub", None), capsys, str(out), "not a directory")
    assert out.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_save_path_not_writable(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        _expect_error(_quantize(model, parent / "out", None), capsys, "not writable")
    finally:
        parent.chmod(0o755)
    assert not (parent / "out").exists()


def test_save_path_is_the_model_dir(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error(_quantize(model, model, None), capsys, "model directory")
