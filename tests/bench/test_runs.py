"""How the benchmark calls ``quantjob quantize`` and reads its summary line."""

from __future__ import annotations

from pathlib import Path

from bench.measure import RunResult
from bench.runs import QuantizeJob, engine_seconds


def test_quantize_argv_lists_one_cpu_device_per_rank(tmp_path: Path) -> None:
    job = QuantizeJob(Path("/m"), Path("/c.jsonl"), samples=64, seq=512, ranks=4)
    argv = job.argv(tmp_path / "out")
    assert argv[1:4] == ["-m", "quantjob.cli", "quantize"]
    flags = dict(zip(argv[4::2], argv[5::2]))
    assert flags["--device"] == "cpu:0,1,2,3" and flags["--calib_samples"] == "64" and flags["--max_length"] == "512"
    assert "--overwrite" in argv
    assert "cpu" in QuantizeJob(Path("/m"), Path("/c"), 1, 8).argv(tmp_path)


def test_engine_seconds_reads_rank_zero_summary(tmp_path: Path) -> None:
    log = tmp_path / "q.log"
    log.write_text("[rank 0] layer 2/2 done\n[rank 0] 16 layers, 64 samples (32768 tokens) in 81.2s\n")
    assert engine_seconds(RunResult([], 1, 1.0, 0, 0, [], log)) == 81.2
    log.write_text("something else\n")
    assert engine_seconds(RunResult([], 1, 1.0, 0, 0, [], log)) is None
