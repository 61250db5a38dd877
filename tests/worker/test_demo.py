"""``quantjob demo``: the README's main job, run exactly as a user runs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from dp_runs import child_env

from quantjob.cli import main
from quantjob.cli.demo import shipped_demo_config


def test_shipped_config_names_every_builder_setting() -> None:
    shape = shipped_demo_config()
    assert shape["family"] in ("llama", "qwen2", "qwen3", "mistral")
    for key in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "seed",
                "outlier_channels", "outlier_scale", "calibration_samples"):
        assert isinstance(shape[key], (int, float)), key


@pytest.mark.parametrize(("flags", "message"), [
    (["--devices", "gpu:0"], "--device 'gpu:0'"),
    (["--layers", "0"], "--layers 0 must be at least 1"),
])
def test_bad_flags_are_refused_before_building(tmp_path: Path, flags: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--output", str(tmp_path / "demo"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_demo_quantizes_on_two_ranks(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "quantjob.cli", "demo", "--output", str(tmp_path / "demo")],
                            check=False, env=child_env(), capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    save = tmp_path / "demo" / "model-w8a8"
    assert f"quantized model: {save}" in out
    layers = shipped_demo_config()["num_layers"]
    assert f"layer {layers}/{layers} done" in out  # progress
    assert "relative output error" in out  # the per-layer error table
    assert "rank 1 of 2 joined" in out
    assert (save / ".quantjob-complete").is_file() and (save / "quant_model_description.json").is_file()
    print(f"quantjob demo took {elapsed:.1f} s")
