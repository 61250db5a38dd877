"""How the benchmark calls ``quantjob quantize`` and reads its summary line."""

from __future__ import annotations

from pathlib import Path

from bench.measure import RunResult
from bench.runs import QuantizeJob, engine_seconds, per_layer_seconds, phase_seconds


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


def test_per_layer_seconds_is_the_slope_after_the_first_layer(tmp_path: Path) -> None:
    log = tmp_path / "q.log"
    log.write_text("[rank 1] rank 1 of 2 joined the process group\nquantizing 4 decoder layers\n"
                   "layer 1/4 done (relative output error 7.385e-02, 5.0s, ETA 15s)\n"
                   "layer 2/4 done (relative output error 3.890e-02, 9.5s, ETA 9s)\n"
                   "layer 3/4 done (relative output error n/a, 13.4s, ETA 4s)\n"
                   "layer 4/4 done (relative output error 2.261e-02, 17.6s)\nwrote /tmp/out\n")
    assert per_layer_seconds(RunResult([], 1, 1.0, 0, 0, [], log)) == (17.6 - 5.0) / 3
    log.write_text("layer 1/1 done (relative output error 1.0e-02, 3.0s)\n")  # one layer: no slope
    assert per_layer_seconds(RunResult([], 1, 1.0, 0, 0, [], log)) is None
    assert per_layer_seconds(RunResult([], 1, 1.0, 0, 0, [], None)) is None


def test_phase_seconds_reads_rank_zero_phases_and_the_time_outside_the_runner(tmp_path: Path) -> None:
    log = tmp_path / "q.log"
    log.write_text("[rank 0] where the time went (rank 0): start 4.3 s, observation 57.0 s, quantized forward 8.3 s\n"
                   "[rank 0] 16 layers, 64 samples (32768 tokens) in 70.0s\n")
    assert phase_seconds(RunResult([], 1, 73.5, 0, 0, [], log)) == {
        "start": 4.3, "observation": 57.0, "quantized forward": 8.3, "outside the runner": 3.5}
    log.write_text("[rank 0] 16 layers, 64 samples (32768 tokens) in 70.0s\n")  # an older build: no phases
    assert phase_seconds(RunResult([], 1, 73.5, 0, 0, [], log)) is None
