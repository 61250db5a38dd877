"""The local launcher, driven with a small fake worker (no engine needed)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from quantjob.worker.group import launcher
from quantjob.worker.group.device import DeviceSpec, parse_devices

# argv: MODE [ARG]. Prints its environment as JSON, then behaves as MODE says.
FAKE_WORKER = """
import json, os, signal, sys, time
mode = sys.argv[1]
rank = int(os.environ["RANK"])
keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "QUANTJOB_LOCAL_DEVICE",
        "OMP_NUM_THREADS", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"]
print("ENV " + json.dumps({k: os.environ.get(k) for k in keys}))
print(f"hello from {rank}", file=sys.stderr)
if mode == "ok":
    sys.exit(0)
if mode == "fail":  # rank ARG fails after a moment; the others would run for a minute
    if rank == int(sys.argv[2]):
        time.sleep(0.5)
        print("something broke: bad tensor", file=sys.stderr)
        sys.exit(3)
    open(os.path.join(sys.argv[3], f"pid{rank}"), "w").write(str(os.getpid()))
    time.sleep(60)
    sys.exit(0)
if mode == "wait":
    open(os.path.join(sys.argv[2], f"pid{rank}"), "w").write(str(os.getpid()))
    time.sleep(60)
if mode == "flood":  # far more than a pipe holds
    for i in range(4000):
        print(f"line {i} " + "x" * 100)
    sys.exit(0)
if mode == "orphan":
    from quantjob.worker.group.launcher import die_with_launcher
    die_with_launcher()
    open(os.path.join(sys.argv[2], f"pid{rank}"), "w").write(str(os.getpid()))
    time.sleep(60)
"""


@pytest.fixture
def fake(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    return [sys.executable, str(script)]


def _envs(text: str) -> dict[int, dict[str, str | None]]:
    found = {}
    for line in text.splitlines():
        prefix, _, rest = line.partition("] ")
        if rest.startswith("ENV "):
            found[int(prefix.removeprefix("[rank "))] = json.loads(rest[4:])
    return found


def test_every_rank_gets_the_job_environment(fake: list[str]) -> None:
    out = io.StringIO()
    code = launcher.launch(["ok"], parse_devices("cpu:0,1,2"), env={"PATH": ""}, out=out, program=fake)
    assert code == 0
    envs = _envs(out.getvalue())
    assert sorted(envs) == [0, 1, 2]
    ports = {e["MASTER_PORT"] for e in envs.values()}
    assert len(ports) == 1
    for rank, env in envs.items():
        assert env["RANK"] == env["LOCAL_RANK"] == str(rank)
        assert env["WORLD_SIZE"] == "3" and env["MASTER_ADDR"] == "127.0.0.1"
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["QUANTJOB_LOCAL_DEVICE"] == str(rank)  # cpu: no visibility restriction
        assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 3))
    assert out.getvalue().count("hello from") == 3
    for rank in range(3):
        assert f"[rank {rank}] hello from {rank}" in out.getvalue()


def test_omp_threads_kept_when_set(fake: list[str]) -> None:
    out = io.StringIO()
    assert launcher.launch(["ok"], parse_devices("cpu:0,1"), env={"PATH": "", "OMP_NUM_THREADS": "3"},
                           out=out, program=fake) == 0
    assert {e["OMP_NUM_THREADS"] for e in _envs(out.getvalue()).values()} == {"3"}


def test_rank_env_even_core_split_and_visibility() -> None:
    env = launcher.rank_env(DeviceSpec("npu", (4, 6)), 1, 1234, {"KEEP": "x", "JOB_COMPLETION_INDEX": "0"}, cores=16)
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "6" and env["QUANTJOB_LOCAL_DEVICE"] == "0"
    assert env["KEEP"] == "x" and "JOB_COMPLETION_INDEX" not in env
    assert launcher.rank_env(DeviceSpec("cpu", (0, 1, 2)), 0, 1, {}, cores=2)["OMP_NUM_THREADS"] == "1"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_fail_fast_stops_the_others_and_shows_the_error(fake: list[str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    started = time.monotonic()
    code = launcher.launch(["fail", "1", str(tmp_path)], parse_devices("cpu:0,1,2"), env={"PATH": ""},
                           out=out, program=fake, grace_s=5.0)
    assert time.monotonic() - started < 30  # not the 60 s the healthy ranks would run
    assert code == 3
    err = capsys.readouterr().err
    assert "quantjob: rank 1 failed with exit code 3" in err
    assert "something broke: bad tensor" in err.split("failed with", 1)[1]
    assert "[rank 1] something broke: bad tensor" in out.getvalue()
    for rank in (0, 2):
        pid = int((tmp_path / f"pid{rank}").read_text())
        assert not _alive(pid), f"rank {rank} still running"


def test_a_rank_killed_by_a_signal_fails_the_launch(fake: list[str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def kill_rank_1() -> None:
        pid_file = tmp_path / "pid1"
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_1)
    killer.start()
    code = launcher.launch(["wait", str(tmp_path)], parse_devices("cpu:0,1"), env={"PATH": ""},
                           out=io.StringIO(), program=fake, grace_s=5.0)
    killer.join()
    assert code != 0
    assert "quantjob: rank 1 failed with signal SIGKILL" in capsys.readouterr().err
    assert not _alive(int((tmp_path / "pid0").read_text()))


def _launcher_process(fake: list[str], mode: str, tmp_path: Path, devices: str,
                      stderr: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """``launcher.launch`` in a process of its own, running the fake worker in ``mode``.

    A process started in the background by a non-interactive shell (``cmd &``), as a CI harness may
    be, inherits SIGINT ignored, and the launcher then keeps ignoring it, as Python itself does. The
    child starts with SIGINT at its default instead, as a terminal's Ctrl-C finds it: a SIGINT sent
    before the interpreter is up kills it (never a launcher with ranks that missed the signal), and
    Python installs its handler from there on. The driver sets that handler again in case the
    interpreter was told to leave signals alone."""
    driver = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "import sys; from quantjob.worker.group import launcher, device; "
              f"sys.exit(launcher.launch([{mode!r}, {str(tmp_path)!r}], device.parse_devices({devices!r}), "
              f"program={fake!r}, grace_s=5.0))")
    # a handler (unlike "ignore") is reset to the default across exec; the tests run in the main thread
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-c", driver], env={"PATH": "", "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_every_rank(fake: list[str], tmp_path: Path, signum: int) -> None:
    proc = _launcher_process(fake, "wait", tmp_path, "cpu:0,1", stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"pid{r}").exists() and (tmp_path / f"pid{r}").read_text() for r in (0, 1)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err
    for rank in (0, 1):
        assert not _alive(int((tmp_path / f"pid{rank}").read_text()))


def test_a_stop_request_is_a_flag_never_an_exception_inside_subprocess() -> None:
    """SIGINT/SIGTERM set a flag the launcher reads between steps, never a KeyboardInterrupt raised
    inside subprocess (in Popen() it would orphan the rank being started; in Popen.poll it could
    leave the wait lock held). An ignored SIGINT stays ignored; the handlers are put back."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # maybe ignored (see _launcher_process)
    stop = launcher._StopRequest()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt here
        time.sleep(0.01)
        assert stop.requested
        with pytest.raises(launcher._Interrupted):  # read before the ranks are looked at
            launcher._wait_all([launcher._Rank(0, Exited(0))], stop)  # type: ignore[arg-type]
    finally:
        stop.restore(previous)
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        other = launcher._StopRequest()
        taken = other.install()
        assert signal.SIGINT not in taken and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        other.restore(taken)
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_a_signal_at_any_moment_of_the_start_leaves_no_rank_behind(fake: list[str], tmp_path: Path) -> None:
    for delay in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0):
        for pid_file in tmp_path.glob("pid*"):
            pid_file.unlink()
        proc = _launcher_process(fake, "wait", tmp_path, "cpu:0,1,2")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)  # never hangs
        assert proc.returncode in (130, 1, -signal.SIGINT), (delay, proc.returncode)
        time.sleep(0.2)  # a rank that wrote its pid file just now must be gone too
        for pid_file in tmp_path.glob("pid*"):
            assert not _alive(int(pid_file.read_text())), (delay, pid_file.name)


def test_launcher_path_does_not_import_torch() -> None:
    """Every rank imports torch itself; the launcher doing it first would only delay them (~1 s)."""
    code = ("import sys; import quantjob.cli.quantize, quantjob.worker.group.launcher, quantjob.worker.group.group_env, "
            "quantjob.worker.model.model_config, quantjob.worker.group.device; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cores_are_the_affinity_capped_by_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert launcher.available_cores(tmp_path / "missing") == affinity
    cpu_max.write_text("max 100000\n")
    assert launcher.available_cores(cpu_max) == affinity
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: 2 threads in all, at most the affinity
    assert launcher.available_cores(cpu_max) == min(2, affinity)
    cpu_max.write_text("50000 100000\n")
    assert launcher.available_cores(cpu_max) == 1
    cpu_max.write_text("garbage\n")
    assert launcher.available_cores(cpu_max) == affinity


def test_devices_beyond_the_visible_ones_fail_before_any_rank_starts(fake: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"only 1 device\(s\) are visible \(CUDA_VISIBLE_DEVICES=3\)"):
        launcher.launch(["wait", str(tmp_path)], parse_devices("cuda:0,1"), env={"PATH": "", "CUDA_VISIBLE_DEVICES": "3"},
                        out=io.StringIO(), program=fake, grace_s=5.0)
    time.sleep(1.5)  # a rank 0 started anyway would have written its pid by now
    assert not list(tmp_path.glob("pid*"))  # rank 0 was never started


def test_a_rank_that_cannot_start_leaves_no_other_running(fake: list[str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = subprocess.Popen
    calls: list[int] = []

    def second_fails(*args: object, **kwargs: object) -> subprocess.Popen[str]:
        calls.append(1)
        if len(calls) == 2:
            deadline = time.monotonic() + 30  # rank 0 is up before rank 1 fails
            while not (tmp_path / "pid0").exists() or not (tmp_path / "pid0").read_text():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            raise OSError(24, "Too many open files")
        return real(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(launcher.subprocess, "Popen", second_fails)
    with pytest.raises(OSError, match="Too many open files"):
        launcher.launch(["wait", str(tmp_path)], parse_devices("cpu:0,1"), env={"PATH": ""},
                        out=io.StringIO(), program=fake, grace_s=5.0)
    assert not _alive(int((tmp_path / "pid0").read_text()))


class ClosedReader(io.StringIO):
    """An output whose reader went away after a few lines (``quantjob ... | head``)."""

    def write(self, text: str) -> int:
        if self.tell() > 500:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_lost_output_does_not_block_the_ranks(fake: list[str]) -> None:
    started = time.monotonic()
    assert launcher.launch(["flood"], parse_devices("cpu:0,1"), env={"PATH": ""}, out=ClosedReader(),
                           program=fake, grace_s=5.0) == 0
    assert time.monotonic() - started < 60


def test_ranks_die_with_a_killed_launcher(fake: list[str], tmp_path: Path) -> None:
    """SIGKILL cannot be caught by the launcher; the ranks' parent-death signal ends them."""
    proc = _launcher_process(fake, "orphan", tmp_path, "cpu:0,1")
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"pid{r}").exists() and (tmp_path / f"pid{r}").read_text() for r in (0, 1)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in (0, 1)]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "a rank outlived its launcher"
        time.sleep(0.05)


def test_die_with_launcher_is_a_no_op_outside_a_launched_rank() -> None:
    launcher.die_with_launcher({})  # returns; would exit were the launcher pid wrong
    launcher.die_with_launcher({launcher.LAUNCHER_PID_ENV: "not-a-pid"})


class Exited:
    """A finished process as _wait_all sees it."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode


def test_of_ranks_found_failed_together_the_one_killed_by_a_signal_is_reported() -> None:
    ranks = [launcher._Rank(0, Exited(1)), launcher._Rank(1, Exited(-9)), launcher._Rank(2, Exited(0))]  # type: ignore[arg-type]
    assert launcher._wait_all(ranks) is ranks[1]
    ranks = [launcher._Rank(0, Exited(0)), launcher._Rank(1, Exited(3)), launcher._Rank(2, Exited(1))]  # type: ignore[arg-type]
    assert launcher._wait_all(ranks) is ranks[1]
