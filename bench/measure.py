"""Run one command in a subprocess and measure its wall time and peak memory.

Peak RSS comes from two sources that agree where both apply:

* ``ru_maxrss`` of the command, recorded by the small wrapper ``bench/maxrss.py`` that starts it:
  the largest peak RSS of the command and of every descendant it reaped (Linux keeps the
  maximum, not the sum), exact for a single process;
* polling ``/proc/<pid>/status`` (``VmHWM``, the process's own high-water mark) of every
  descendant every ``poll_s`` seconds, which gives the peak of each process separately, and reading
  ``RANK`` from its environment, so a multi-rank run reports a peak per rank.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POLL_S = 0.2
_WRAPPER = Path(__file__).resolve().parent / "maxrss.py"
MB = 1024 * 1024


class BenchError(RuntimeError):
    """A measured command failed or ran out of time."""


@dataclass
class ProcessPeak:
    """The highest ``VmHWM`` seen for one process of the measured tree."""

    pid: int
    rank: int | None
    command: str
    peak_rss_bytes: int


@dataclass
class RunResult:
    """What one measured command did."""

    argv: list[str]
    pid: int
    wall_s: float
    returncode: int
    max_rss_bytes: int  # ru_maxrss of the command: the largest single-process peak of its tree
    processes: list[ProcessPeak] = field(default_factory=list)
    log_path: Path | None = None

    def rank_peaks(self) -> dict[int, int]:
        """Peak RSS per rank (processes with ``RANK`` in their environment)."""
        peaks: dict[int, int] = {}
        for proc in self.processes:
            if proc.rank is not None:
                peaks[proc.rank] = max(peaks.get(proc.rank, 0), proc.peak_rss_bytes)
        return peaks

    def max_rank_peak_bytes(self) -> int:
        """Peak RSS per rank, as the maximum over ranks; the whole-tree peak when no rank was seen.

        Polling can miss a rank's last 0.2 s; ``ru_maxrss`` cannot, so when it exceeds the root
        process's own peak it belongs to a rank and is taken as the maximum.
        """
        peaks = self.rank_peaks()
        if not peaks:
            return self.max_rss_bytes
        root = max((p.peak_rss_bytes for p in self.processes if p.pid == self.pid), default=0)
        best = max(peaks.values())
        return max(best, self.max_rss_bytes) if self.max_rss_bytes > root else best


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: fields resume after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (not ``root`` itself)."""
    children = _children_map()
    found: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def vm_hwm_bytes(pid: int) -> int | None:
    """The process's peak resident set size (``VmHWM``), None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rank_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            for item in handle.read().split(b"\0"):
                if item.startswith(b"RANK="):
                    value = item[5:].decode("ascii", "replace")
                    return int(value) if value.isdigit() else None
    except OSError:
        return None
    return None


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


class _TreeWatcher:
    def __init__(self, root: int) -> None:
        self.root = root
        self.peaks: dict[int, ProcessPeak] = {}

    def sample(self) -> None:
        for pid in [self.root, *descendants(self.root)]:
            hwm = vm_hwm_bytes(pid)
            if hwm is None:
                continue
            known = self.peaks.get(pid)
            if known is None:
                self.peaks[pid] = ProcessPeak(pid, _rank_of(pid), _command_of(pid), hwm)
                continue
            if known.rank is None:
                # first seen between fork and exec, it still had the launcher's environment and
                # command line: read both again until the rank's own appear
                known.rank, known.command = _rank_of(pid), _command_of(pid)
            known.peak_rss_bytes = max(known.peak_rss_bytes, hwm)

    def kill_all(self) -> None:
        for pid in [*descendants(self.root), self.root]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_measured(argv: Sequence[str], *, env: Mapping[str, str] | None = None, log_path: Path,
                 cwd: Path | None = None, timeout_s: float = 3600.0, poll_s: float = POLL_S,
                 check: bool = True) -> RunResult:
    """Run ``argv`` to completion, output to ``log_path``; wall time and peak RSS of its process tree.

    ``argv`` is started by ``bench/maxrss.py`` (see there why). Raises :class:`BenchError` (with
    the log's last lines) when it exits non-zero and ``check`` is set, or when it runs longer than
    ``timeout_s`` (the whole tree is killed then).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    record = log_path.with_name(log_path.name + ".maxrss.json")
    record.unlink(missing_ok=True)
    wrapped = [sys.executable, "-S", str(_WRAPPER), str(record), "--", *argv]
    with log_path.open("wb") as log:
        start = time.perf_counter()
        wrapper = subprocess.Popen(wrapped, env=dict(env) if env is not None else None, cwd=cwd,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        watcher = _TreeWatcher(wrapper.pid)
        while True:
            watcher.sample()
            pid, status, _ = os.wait4(wrapper.pid, os.WNOHANG)
            if pid == wrapper.pid:
                break
            if time.perf_counter() - start > timeout_s:
                watcher.kill_all()
                os.wait4(wrapper.pid, 0)
                wrapper.returncode = -9
                raise BenchError(f"{' '.join(argv)} ran longer than {timeout_s:.0f} s and was killed; "
                                 f"raise --timeout or shrink the job (log: {log_path})")
            time.sleep(poll_s)
        wall = time.perf_counter() - start
    wrapper.returncode = os.waitstatus_to_exitcode(status)
    try:
        measured = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BenchError(f"{' '.join(argv)}: the maxrss wrapper left no record at {record} ({error}); "
                         f"last lines of {log_path}:\n{log_tail(log_path)}") from error
    processes = [p for p in watcher.peaks.values() if p.pid != wrapper.pid]
    result = RunResult(list(argv), measured["pid"], wall, measured["returncode"], measured["maxrss_bytes"],
                       processes, log_path)
    if check and result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with {result.returncode}; "
                         f"last lines of {log_path}:\n{log_tail(log_path)}")
    return result


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, indented."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return "  (no log)"
    return "\n".join(f"  {line}" for line in text) or "  (empty log)"


def thread_env(threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with every thread-count variable set to ``threads``."""
    env = dict(os.environ if base is None else base)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
