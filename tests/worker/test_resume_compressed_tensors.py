"""A rank killed mid-run with compressed_tensors_saver: the same command again resumes and ends with
the same files as an uninterrupted run (the ascendv1 case is ``test_resume.py``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from dp_runs import (
    assert_same_tree,
    calibration,
    run_quantize,
    start_quantize,
    tiny_model,
)
from test_resume import KILL_AFTER, NUM_LAYERS, _committed, _rank_pid

pytestmark = pytest.mark.slow


def _argv(model: Path, save: Path, calib: Path, config: Path) -> list[str]:
    return ["quantize", "--model_path", str(model), "--save_path", str(save), "--device", "cpu:0,1",
            "--config_path", str(config), "--calib_file", str(calib), "--error_samples", "3"]


def test_killed_rank_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    model = tiny_model(tmp_path, "qwen2", num_layers=NUM_LAYERS)
    calib = calibration(tmp_path, samples=9)
    config = tmp_path / "w4a16.yaml"
    config.write_text(yaml.safe_dump({"apiversion": "modelslim_v1", "spec": {
        "process": [{"type": "linear_quant", "qconfig": {"weight": {
            "scope": "per_group", "dtype": "int4", "symmetric": True, "ext": {"group_size": 32}}}}],
        "save": [{"type": "compressed_tensors_saver", "part_file_size": 2e-4}]}}))
    reference = tmp_path / "uninterrupted"
    run_quantize(_argv(model, reference, calib, config))

    save = tmp_path / "interrupted"
    proc = start_quantize(_argv(model, save, calib, config))
    deadline = time.monotonic() + 240
    while _committed(save) < KILL_AFTER:
        assert proc.poll() is None, f"the run ended before layer {KILL_AFTER} was committed:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no layer commit seen in time"
        time.sleep(0.01)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None, "rank 1's process not found under the launcher"
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    committed = _committed(save)
    assert KILL_AFTER <= committed < NUM_LAYERS, f"{committed} layers committed: the kill came too late"
    assert not (save / ".quantjob-complete").exists()

    log = run_quantize(_argv(model, save, calib, config))
    assert f"resuming at layer {committed} of {NUM_LAYERS}" in log, log
    assert len(list(save.glob("model-*.safetensors"))) > 1
    assert_same_tree(reference, save, same_layout=True)
