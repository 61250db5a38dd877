"""The measuring harness against fake commands whose memory use is known."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from bench.measure import MB, BenchError, run_measured, thread_env

# A parent that holds ~30 MB and starts two "ranks" (RANK=0/1 in their environment) holding
# ~120 MB and ~200 MB; each touches every page so the memory is resident.
_TREE = textwrap.dedent("""
    import os, subprocess, sys, time
    def hold(mb):
        block = bytearray(mb * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(0.8)
        return block
    if len(sys.argv) > 1:
        hold(int(sys.argv[1]))
        sys.exit(0)
    keep = hold(30)
    ranks = [subprocess.Popen([sys.executable, __file__, str(mb)], env={**os.environ, "RANK": str(r)})
             for r, mb in enumerate((120, 200))]
    sys.exit(max(p.wait() for p in ranks))
""")


def test_peak_rss_per_rank_of_a_process_tree(tmp_path: Path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(_TREE)
    result = run_measured([sys.executable, str(script)], log_path=tmp_path / "tree.log", poll_s=0.05)
    peaks = result.rank_peaks()
    assert sorted(peaks) == [0, 1]
    assert 120 * MB <= peaks[0] < 200 * MB
    assert 200 * MB <= peaks[1] < 280 * MB
    assert result.max_rank_peak_bytes() == max(peaks[1], result.max_rss_bytes)
    assert 200 * MB <= result.max_rss_bytes < 280 * MB  # wait4: the largest process, not the sum
    assert result.wall_s >= 0.8


# A rank seen by the poller before its exec still has the parent's environment (no RANK): the
# child sleeps between fork and exec so that the poller is sure to see it in that window.
_LATE_EXEC = textwrap.dedent("""
    import os, sys, time
    if len(sys.argv) > 1:
        time.sleep(0.5)
        sys.exit(0)
    pid = os.fork()
    if pid == 0:
        time.sleep(0.4)
        os.execve(sys.executable, [sys.executable, __file__, "rank"], {**os.environ, "RANK": "1"})
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
""")


def test_rank_seen_before_its_exec_is_still_found(tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(_LATE_EXEC)
    result = run_measured([sys.executable, str(script)], log_path=tmp_path / "late.log", poll_s=0.05)
    assert sorted(result.rank_peaks()) == [1]
    assert any(p.rank == 1 and "rank" in p.command for p in result.processes)


def test_single_process_peak_comes_from_wait4(tmp_path: Path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(_TREE)
    result = run_measured([sys.executable, str(script), "150"], log_path=tmp_path / "one.log")
    assert result.rank_peaks() == {}
    assert 150 * MB <= result.max_rank_peak_bytes() == result.max_rss_bytes < 230 * MB


def test_the_benchmark_process_own_memory_is_not_counted(tmp_path: Path) -> None:
    # a child's ru_maxrss counts its parent's memory on Linux unless started from a small process
    held = bytearray(300 * MB)
    for i in range(0, len(held), 4096):
        held[i] = 1
    script = tmp_path / "tree.py"
    script.write_text(_TREE)
    result = run_measured([sys.executable, str(script), "40"], log_path=tmp_path / "small.log")
    assert 40 * MB <= result.max_rss_bytes < 120 * MB
    del held


def test_failure_names_the_command_and_shows_the_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('model dir missing'); raise SystemExit(3)"]
    with pytest.raises(BenchError, match=r"exited with 3(.|\n)*model dir missing"):
        run_measured(argv, log_path=tmp_path / "fail.log")
    assert run_measured(argv, log_path=tmp_path / "fail.log", check=False).returncode == 3


def test_timeout_kills_the_tree(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="ran longer than"):
        run_measured([sys.executable, "-c", "import time; time.sleep(30)"], log_path=tmp_path / "slow.log",
                     timeout_s=0.5)


def test_thread_env_sets_every_thread_variable() -> None:
    env = thread_env(3, {"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    assert env["PATH"] == "/bin"
