"""Both benchmarks end to end through their main functions, at the smallest shapes (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bench_dp, bench_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TINY = ["--quick", "--layers", "1", "--samples", "2", "--seq", "8"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def test_engine_bench_prints_both_tables_and_writes_json(cache: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_engine.main([*TINY, "--depths", "1", "--threads", "1", "--batch", "2", "--no-batch1",
                              "--cache-dir", str(cache), "--results-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "## Time (1 layers)" in out and "## Peak RSS by depth" in out
    assert "quantjob quantize, whole process" in out
    data = json.loads((tmp_path / "engine.json").read_text())
    assert [row["layers"] for row in data["memory"]["rows"]] == [1]
    assert all(row["quantize_peak_rss_bytes"] > 0 and row["load_peak_rss_bytes"] > 0
               for row in data["memory"]["rows"])
    assert data["baseline"]["samples"] == 2 and data["baseline"]["tokens"] == 16
    assert data["time"]["quantize_wall_s"] > 0
    assert (tmp_path / "engine.md").read_text().strip() == out.strip()


def test_dp_bench_runs_one_and_two_ranks(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_dp.main([*TINY, "--ranks", "2", "--scaling-samples", "2", "--scaling-ranks", "2", "--repeat", "2",
                          "--cache-dir", str(cache), "--results-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "## Ranks (2 samples)" in out and "## Time against calibration samples" in out
    data = json.loads((tmp_path / "dp.json").read_text())
    rows = {row["ranks"]: row for row in data["ranks"]["rows"]}
    assert sorted(rows) == [1, 2]
    assert sorted(rows[2]["rank_peaks_bytes"]) == ["0", "1"]  # both ranks seen by the /proc poller
    assert rows[2]["peak_rss_per_rank_bytes"] > 0
    assert data["repeat"] == 2 and all(len(row["walls_s"]) == 2 for row in rows.values())
    assert all(row["wall_s"] == min(row["walls_s"]) for row in rows.values())  # median of two: the lower
    assert [entry["samples"] for entry in data["scaling"]] == [2]


def test_failing_quantize_is_reported_not_raised(cache: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_dp.main([*TINY, "--ranks", "1", "--scaling-samples", "2", "--scaling-ranks", "1",
                          "--quant-type", "w3a3", "--cache-dir", str(cache), "--results-dir", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "bench: error:" in err and "w3a3" in err
    assert not (tmp_path / "dp.json").exists()
