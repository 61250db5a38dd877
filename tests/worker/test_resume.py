"""A rank killed mid-run: the launcher fails; the same command again resumes and ends identical."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from dp_runs import (
    assert_same_tree,
    calibration,
    quantize_argv,
    run_quantize,
    start_quantize,
    tiny_model,
)

pytestmark = pytest.mark.slow

NUM_LAYERS = 8
KILL_AFTER = 2  # committed layers before rank 1 is killed
STAGING = ".quantjob-staging"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    for child in _children(launcher_pid):
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return child
    return None


def _committed(save: Path) -> int:
    """The committed prefix: owners commit in the background, so layer k+1 may land before layer k,
    and a resumed run starts at the first gap."""
    count = 0
    while count < NUM_LAYERS and (save / STAGING / f"layer-{count:05d}.json").is_file():
        count += 1
    return count


def test_killed_rank_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    model = tiny_model(tmp_path, "llama", num_layers=NUM_LAYERS)
    calib = calibration(tmp_path, samples=9)
    reference = tmp_path / "uninterrupted"
    run_quantize(quantize_argv(model, reference, calib, "cpu:0,1", "w8a8"))

    save = tmp_path / "interrupted"
    argv = quantize_argv(model, save, calib, "cpu:0,1", "w8a8")
    proc = start_quantize(argv)
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
    assert "quantjob: rank 1 failed with signal SIGKILL" in out, out
    committed = _committed(save)
    assert KILL_AFTER <= committed < NUM_LAYERS, f"{committed} layers committed: the kill came too late"
    assert not (save / ".quantjob-complete").exists()

    log = run_quantize(argv)
    assert f"resuming at layer {committed} of {NUM_LAYERS}" in log, log
    assert_same_tree(reference, save, same_layout=True)
