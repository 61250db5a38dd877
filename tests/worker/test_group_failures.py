"""A stuck or lost rank stops the group within the collective timeout, and the others name it
(issue 14, item 15): one ``GroupError`` per surviving rank, exit code ``CRASH`` (the operator
restarts the group), never an hour-long wait or a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantjob.api import exit_codes
from quantjob.worker.group.launcher import free_port

pytestmark = pytest.mark.slow

# argv: MODE ("stop" or "exit"), VICTIM, TIMEOUT. The victim stops itself (or exits) at step 3; the
# others report.
RANK_SCRIPT = """
import json, os, signal, sys, torch
from quantjob.worker.group import distributed
from quantjob.worker.errors import GroupError
group = distributed.init_group_from_env("cpu", timeout_s=60, collective_timeout_s=float(sys.argv[3]))
try:
    for step in range(50):
        group.where = f"layer {step}"
        if group.rank == int(sys.argv[2]) and step == 3:
            if sys.argv[1] == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(9)
        group.all_min(torch.tensor([float(group.rank)]))
except GroupError as error:
    print("ERROR " + json.dumps({"code": error.exit_code, "message": str(error)}), flush=True)
    os._exit(error.exit_code)
print("DONE", flush=True)
"""


def _start(world: int, mode: str, victim: int, timeout_s: float) -> list[subprocess.Popen[str]]:
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, mode, str(victim), str(timeout_s)], env=env,
                                      text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def _report(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=120)
    assert "ERROR " in out, (out, err)
    assert "Traceback" not in err, err
    return {"returncode": proc.returncode, **json.loads(out.split("ERROR ", 1)[1])}


@pytest.mark.parametrize("mode", ["stop", "exit"])
def test_the_survivors_name_the_rank_that_holds_the_group_up(mode: str) -> None:
    procs = _start(3, mode, 1, timeout_s=4.0)
    started = time.monotonic()
    try:
        reports = [_report(procs[rank]) for rank in (0, 2)]
    finally:
        procs[1].kill()
        procs[1].communicate(timeout=60)
    for rank, report in zip((0, 2), reports, strict=True):
        message = str(report["message"])
        assert report["returncode"] == report["code"] == exit_codes.CRASH, report
        assert message.startswith(f"rank {rank}: collective 4 (all_min during layer 3)"), message
        assert "rank 1 does not respond" in message and "last at collective 3 (all_min during layer 2)" in message
        assert "--collective_timeout" in message
        if mode == "stop":
            assert "timed out after 4 s" in message, message
    assert time.monotonic() - started < 90  # the timeout (4 s) and the diagnosis, not the default hour


def test_a_stopped_rank_0_is_named_by_its_silent_store() -> None:
    """Rank 0 serves the rendezvous store: when it stops, the store's silence names it."""
    procs = _start(2, "stop", 0, timeout_s=4.0)
    try:
        report = _report(procs[1])
    finally:
        procs[0].kill()
        procs[0].communicate(timeout=60)
    message = str(report["message"])
    assert report["returncode"] == exit_codes.CRASH, report
    assert message.startswith("rank 1: collective 4 (all_min during layer 3) timed out after 4 s"), message
    assert "rank 0 is stopped, hung or gone" in message, message


def test_a_stopped_rank_of_a_local_run_is_named_within_the_timeout(tmp_path: Path) -> None:
    """``quantjob quantize --device cpu:0,1`` with rank 1 stopped (SIGSTOP) mid-run: rank 0 gives up
    after ``--collective_timeout`` seconds with one line naming rank 1, and the launcher fails."""
    sys.path.insert(0, str(Path(__file__).parent))
    from dp_runs import calibration, quantize_argv, start_quantize, tiny_model
    from test_resume import _committed, _rank_pid

    model = tiny_model(tmp_path, "llama", num_layers=8)
    save = tmp_path / "out"
    proc = start_quantize([*quantize_argv(model, save, calibration(tmp_path), "cpu:0,1", "w8a8"),
                           "--collective_timeout", "4"])
    victim = None
    try:
        deadline = time.monotonic() + 240
        while _committed(save) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no layer committed in time"
            time.sleep(0.01)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        out, _ = proc.communicate(timeout=180)
    finally:
        if victim is not None:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == exit_codes.CRASH, out
    assert "quantjob: rank 0 failed with exit code 1" in out, out
    errors = [line for line in out.splitlines() if "quantjob: error:" in line]
    assert errors and "timed out after 4 s" in errors[0] and "rank 1 does not respond" in errors[0], out
    assert "Traceback" not in out, out
    assert time.monotonic() - stopped < 120, "the group waited far longer than the collective timeout"
