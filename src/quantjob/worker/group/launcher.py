"""The local launcher: one worker process per listed device, with the environment a Job pod gets.

``quantjob quantize ... --device cpu:0,1`` re-runs itself (``python -m quantjob.cli ...``) once
per device with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set, streams every
rank's output with a ``[rank N]`` prefix, and fails fast: when one rank dies the others are
stopped and the failing rank's last lines are shown.
"""

from __future__ import annotations

import collections
import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

from quantjob.worker.group.device import DeviceSpec, visible_devices_env
from quantjob.worker.group.group_env import LOCAL_DEVICE_ENV
from quantjob.worker.group.threads import threads_per_rank
from quantjob.worker.progress import PIPE_ENV, PIPE_MARKER, ProgressHook, TerminalProgress, replay_event

TAIL_LINES = 20
GRACE_S = 10.0
POLL_S = 0.1
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# Set in every rank's environment: the launcher's pid (see die_with_launcher).
LAUNCHER_PID_ENV = "QUANTJOB_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` is the node's count; in a pod limited to 4 CPUs on a 64-core node it would
    give every rank 16 threads and oversubscribe the quota many times.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text(encoding="ascii").split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2, or no limit
        pass
    return max(1, cores)


def rank_env(devices: DeviceSpec, rank: int, port: int, base: Mapping[str, str],
             cores: int | None = None) -> dict[str, str]:
    """The environment of rank ``rank``: ``base`` plus what a Job pod would get."""
    env = dict(base)
    world = devices.count
    env.update({
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("JOB_COMPLETION_INDEX", None)
    env[PIPE_ENV] = "1"  # rank 0 sends progress events; the launcher renders them
    env[LAUNCHER_PID_ENV] = str(os.getpid())  # the rank dies with us (die_with_launcher)
    visible = visible_devices_env(devices.type, devices.indices[rank], base)
    env.update(visible)
    # Visibility restricted to one accelerator: it is index 0 inside the rank.
    env[LOCAL_DEVICE_ENV] = "0" if visible else str(devices.indices[rank])
    env["OMP_NUM_THREADS"] = str(threads_per_rank(world, cores or available_cores(), base))
    return env


@dataclass
class _Rank:
    rank: int
    process: subprocess.Popen[str]
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    pump: threading.Thread | None = None


def _pump(rank: _Rank, stream: IO[str], out: TextIO, lock: threading.Lock, progress: ProgressHook) -> None:
    """Copy one rank's output to ``out`` until the rank closes it.

    The pipe is drained to the end whatever happens to ``out`` (a reader gone, as under
    ``| head``): a rank whose pipe fills blocks forever, and a blocked rank never fails fast.
    """
    prefix = f"[rank {rank.rank}] "
    shown = True
    for line in stream:
        text = line.rstrip("\n")
        if text.startswith(PIPE_MARKER):
            if shown:
                with lock:
                    try:
                        replay_event(text, progress)
                    except (OSError, ValueError):  # a closed terminal (ValueError: also a garbled event)
                        shown = False
            continue
        with lock:
            rank.tail.append(text)
            if shown:
                try:
                    out.write(prefix + text + "\n")
                    out.flush()
                except (OSError, ValueError):  # a closed or broken output: keep draining, show no more
                    shown = False
    stream.close()


def _stop(ranks: Sequence[_Rank], grace_s: float) -> None:
    """SIGTERM every running rank, SIGKILL those still alive after ``grace_s``."""
    for r in ranks:
        if r.process.poll() is None:
            r.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for r in ranks:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            r.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            r.process.kill()
            r.process.wait()


def launch(worker_argv: list[str], devices: DeviceSpec, *, env: dict[str, str] | None = None,
           out: TextIO | None = None, grace_s: float = GRACE_S,
           program: Sequence[str] | None = None) -> int:
    """Run ``python -m quantjob.cli <worker_argv>`` once per device; 0 when every rank succeeded.

    ``env`` replaces the inherited environment (default: ``os.environ``). Output of every rank
    goes to ``out`` (default stdout), each line prefixed with ``[rank N] ``. When a rank exits
    non-zero the others are stopped and its exit code is returned (1 when it died by a signal).
    ``program`` replaces ``python -m quantjob.cli`` (tests run a small fake worker). Raises
    ValueError, before any rank starts, when the devices do not fit the visible ones.
    """
    out = sys.stdout if out is None else out
    base = dict(os.environ if env is None else env)
    port = free_port()
    lock = threading.Lock()
    progress = TerminalProgress()  # a bar on a terminal, log lines otherwise
    ranks: list[_Rank] = []
    command = [*(program or (sys.executable, "-m", "quantjob.cli")), *worker_argv]
    envs = [rank_env(devices, rank, port, base) for rank in range(devices.count)]  # every error before a start
    stop = _StopRequest()
    previous = stop.install()
    try:
        for rank, rank_environment in enumerate(envs):
            if stop.requested:
                raise _Interrupted
            process = subprocess.Popen(command, env=rank_environment,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, bufsize=1,
                                       start_new_session=True)  # signals reach ranks only via us
            entry = _Rank(rank, process)
            assert process.stdout is not None
            entry.pump = threading.Thread(target=_pump, args=(entry, process.stdout, out, lock, progress),
                                          name=f"quantjob-rank-{rank}", daemon=True)
            entry.pump.start()
            ranks.append(entry)
        failed = _wait_all(ranks, stop)
    except (_Interrupted, KeyboardInterrupt):  # Ctrl-C or SIGTERM (a stopped pod, ``kill``)
        with lock:
            print("quantjob: interrupted; stopping all ranks", file=sys.stderr, flush=True)
        for r in ranks:
            if r.process.poll() is None:
                r.process.send_signal(signal.SIGINT)
        _stop(ranks, grace_s)
        _join(ranks)
        return 130
    except BaseException:  # a rank that cannot start (OSError, ...): none of the others is left behind
        _stop(ranks, grace_s)
        _join(ranks)
        raise
    finally:
        stop.restore(previous)
    if failed is None:
        _join(ranks)
        return 0
    _stop(ranks, grace_s)
    _join(ranks)
    code = failed.process.returncode
    how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
    with lock:
        lines = "\n".join(f"  {line}" for line in failed.tail) or "  (no output)"
        print(f"quantjob: rank {failed.rank} failed with {how}; its last lines:\n{lines}",
              file=sys.stderr, flush=True)
    return code if code > 0 else 1


class _Interrupted(Exception):
    """A stop was requested (SIGINT or SIGTERM); raised by the launcher itself at a safe point."""


class _StopRequest:
    """SIGINT and SIGTERM only set a flag that the launcher reads between steps.

    Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be,
    also inside ``subprocess``: inside ``Popen()`` after the fork it would lose the rank being
    started (never stopped), and inside ``Popen.poll`` between taking and releasing the process's wait
    lock it would leave that lock held for the next ``wait()``. A SIGINT that the launcher's
    parent set to be ignored (a background job of a non-interactive shell) stays ignored, as
    Python itself leaves it.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def _handler(self, signum: int, frame: object) -> None:
        self._event.set()

    def install(self) -> dict[int, object]:
        """Take SIGINT (unless ignored) and SIGTERM; returns the handlers to put back (none off
        the main thread, where Python allows no handler)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, object] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(signum)
            if current is signal.SIG_IGN:
                continue
            previous[signum] = signal.signal(signum, self._handler)
        return previous

    @staticmethod
    def restore(previous: Mapping[int, object]) -> None:
        for signum, handler in previous.items():  # None: a handler not set from Python
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]


def _wait_all(ranks: Sequence[_Rank], stop: _StopRequest | None = None) -> _Rank | None:
    """Wait until every rank succeeded (None) or one failed (that rank); ``_Interrupted`` once a
    stop is requested.

    When several are found failed at once, a rank killed by a signal is the one reported: the
    others' errors are usually its consequence (a peer gone from a collective).
    """
    running = list(ranks)
    while running:
        if stop is not None and stop.requested:
            raise _Interrupted
        failed: list[_Rank] = []
        for r in list(running):
            code = r.process.poll()
            if code is None:
                continue
            if code != 0:
                failed.append(r)
            running.remove(r)
        if failed:
            return min(failed, key=lambda r: (r.process.returncode >= 0, r.rank))
        time.sleep(POLL_S)
    return None


def _join(ranks: Sequence[_Rank]) -> None:
    for r in ranks:
        if r.pump is not None:
            r.pump.join(timeout=5.0)


def die_with_launcher(env: Mapping[str, str] | None = None) -> None:
    """In a rank started by :func:`launch`: be killed when the launcher dies (Linux).

    Ranks run in their own session, so a launcher killed with SIGKILL (an OOM kill, ``kill -9``)
    would leave them waiting in a collective for the collective timeout. The parent-death signal
    is bound to the launcher's main thread, the one that starts every rank. Does nothing outside
    a launched rank or where prctl is missing; exits at once when the launcher is already gone.
    """
    env = os.environ if env is None else env
    raw = env.get(LAUNCHER_PID_ENV, "").strip()
    if not raw.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(raw):  # it died before the signal was armed
        os._exit(1)
