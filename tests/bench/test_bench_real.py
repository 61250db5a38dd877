"""bench/bench_real.py: its verdicts on made-up outcomes, and the harness end to end on a tiny model
(the real checkpoint is not needed: ``--model/--calib/--text`` point at a demo model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bench_real
from bench.bench_real import Inputs, Outcome, tables
from bench.measure import ProcessPeak, RunResult

MB = 1024 * 1024


def _run(wall: float, peak_mb: float) -> RunResult:
    return RunResult(["x"], 1, wall, 0, int(peak_mb * MB), [ProcessPeak(2, 0, "rank 0", int(peak_mb * MB))])


def _outcome(key: str, ppl: float, wall: float | None = None, peak: float = 500.0) -> Outcome:
    return Outcome(key, key, quantize=_run(wall, peak) if wall else None, perplexity={"perplexity": ppl})


INPUTS = Inputs(Path("m"), Path("c"), Path("t"), 64, 512, 2, 512, None, 60.0)


def test_verdicts_follow_the_issue_targets() -> None:
    ours = [_outcome("float", 20.0), _outcome("w8a8", 21.5, 30.0), _outcome("w8a8-flex", 20.9, 40.0),
            _outcome("w8a8-flex-all", 21.1, 40.0),
            _outcome("w8a8-dynamic", 20.2, 30.0), _outcome("w8a8-dynamic-flex", 20.4, 45.0)]
    theirs = [_outcome("llmc-w8a8", 22.0, 200.0, 2000.0), _outcome("llmc-sq-w8a8", 21.0, 150.0, 2000.0)]
    text, payload = tables(ours, theirs, "", INPUTS, "Test CPU")
    targets = payload["targets"]
    assert targets["flex_within_5pct"] is True            # +4.5%
    assert targets["flex_all_within_5pct"] is False       # +5.5%: the wider sites' row is judged on its own
    assert targets["dynamic_within_1_5pct"] is True       # +1.0%
    assert targets["dynamic_flex_within_1_5pct"] is False  # +2.0%: each dynamic row is judged on its own
    assert targets["static_rows_below_llmc"] is True      # 21.5, 20.9 and 21.1 < 22.0
    assert targets["speed_w8a8"] is True                  # 200 / 30 = 6.7x
    assert targets["speed_w8a8-flex"] is False            # 150 / 40 = 3.75x
    assert targets["memory_w8a8"] is True
    assert "CPU: Test CPU" in text and "NOT met" in text

    worse = [_outcome("float", 20.0), _outcome("w8a8", 22.5, 30.0), _outcome("w8a8-dynamic", 20.4, 30.0)]
    _, payload = tables(worse, theirs, "", INPUTS, "Test CPU")
    assert payload["targets"]["static_rows_below_llmc"] is False
    assert payload["targets"]["dynamic_within_1_5pct"] is False   # +2%
    assert payload["targets"]["flex_within_5pct"] is None         # no flex row: not measured
    assert payload["targets"]["flex_all_within_5pct"] is None
    assert payload["targets"]["dynamic_flex_within_1_5pct"] is None


def test_the_floor_says_how_much_of_one_forward_the_speed_target_leaves() -> None:
    ours = [_outcome("float", 20.0), _outcome("w8a8", 21.5, 30.0)]
    theirs = [_outcome("llmc-w8a8", 22.0, 100.0, 2000.0), _outcome("llmc-sq-w8a8", 21.0, 160.0, 2000.0)]
    text, payload = tables(ours, theirs, "", INPUTS, "cpu", floor_s=40.0)
    assert payload["forward_floor_s"] == 40.0
    assert "floor: one bf16 forward of the decoder stack over the calibration samples (transformers, 2 threads" in text
    assert "4x below llmc-w8a8's 100.0 s is 25.0 s, 0.62 of that forward" in text
    assert "4x below llmc-sq-w8a8's 160.0 s is 40.0 s, 1.00 of that forward" in text
    text, payload = tables(ours, theirs, "", INPUTS, "cpu")
    assert payload["forward_floor_s"] is None and "floor:" not in text


def test_crosscheck_text_says_what_transformers_gave() -> None:
    assert bench_real._crosscheck_text({"perplexity": 2.66e10, "tokens": 2048}) == (
        "transformers' own forward: 2.66e+10 on the first 2048 tokens")
    assert bench_real._crosscheck_text({"error": "OSError: no config.json"}).endswith("OSError: no config.json")


def test_a_broken_row_prints_in_a_readable_width() -> None:
    text, _ = tables([_outcome("float", 20.0), _outcome("w8a8", 4.0e10, 30.0)], [], "", INPUTS, "cpu")
    row = next(line for line in text.splitlines() if line.startswith("| w8a8"))
    assert "4e+10" in row and "2e+09x" in row


def test_refused_rows_are_not_available_not_timed() -> None:
    refused = Outcome("w8a8-flex", "flex", quantize=_run(1.0, 30.0), status="not available", note="unknown processor")
    text, payload = tables([_outcome("float", 20.0), refused], [], "llm-compressor rows skipped", INPUTS, "cpu")
    row = next(line for line in text.splitlines() if line.startswith("| flex"))
    assert "not available" in row and "1.00" not in row
    assert payload["targets"]["flex_within_5pct"] is None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_harness_runs_on_a_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from quantjob.worker.model.demo import (
        build_demo_model,
        corpus_text,
        write_calibration_jsonl,
    )

    model = build_demo_model(tmp_path / "model", num_layers=1)
    calib = write_calibration_jsonl(tmp_path / "calib.jsonl", 4)
    text = tmp_path / "eval.txt"
    text.write_text(corpus_text()[:2000], encoding="utf-8")
    code = bench_real.main(["--model", str(model), "--calib", str(calib), "--text", str(text), "--samples", "4",
                            "--seq", "32", "--max-length", "32", "--eval-tokens", "120", "--rows", "float,w8a8",
                            "--no-llmc", "--floor", "yes", "--results-dir", str(tmp_path / "results")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| W8A8 static minmax" in out and "CPU:" in out
    assert "floor: one bf16 forward of the decoder stack" in out
    data = json.loads((tmp_path / "results" / "real.json").read_text())
    rows = {row["key"]: row for row in data["rows"]}
    assert rows["float"]["perplexity"]["tokens"] == 120
    assert rows["w8a8"]["status"] == "ok" and rows["w8a8"]["quantize_wall_s"] > 0
    assert set(rows["w8a8"]["rank_peaks_bytes"]) == {"0", "1"}
    assert data["llmc_note"].startswith("llm-compressor rows skipped")
    assert data["forward_floor_s"] > 0  # timed from the forward child's own report


def test_the_wider_site_rows_differ_from_their_family_rows_only_in_ext_sites() -> None:
    from quantjob.api.modelslim import FlexSmoothQuant, IterSmooth, ModelslimConfig

    rows = {row.key: row for row in bench_real.ROWS}
    for family_key, all_key, kind in (("w8a8-iter-smooth", "w8a8-iter-smooth-all", IterSmooth),
                                      ("w8a8-flex", "w8a8-flex-all", FlexSmoothQuant)):
        family, wider = rows[family_key], rows[all_key]
        assert wider.static and wider.quant_type is None
        sites = []
        for row in (family, wider):
            assert row.config is not None
            process = ModelslimConfig.model_validate(row.config).spec.process
            smoothing = [entry for entry in process if isinstance(entry, kind)]
            assert len(smoothing) == 1
            sites.append(smoothing[0].ext.sites)
        assert sites == ["family", "all"]
        assert family.config is not None and wider.config is not None
        assert wider.config["spec"]["process"][1:] == family.config["spec"]["process"][1:]  # same linear_quant


def test_the_every_token_rows_differ_from_their_probe_rows_only_in_ext_search_tokens() -> None:
    from quantjob.api.modelslim import FlexSmoothQuant, ModelslimConfig

    rows = {row.key: row for row in bench_real.ROWS}
    for probes_key, every_key in (("w8a8-flex", "w8a8-flex-every"), ("w8a8-flex-all", "w8a8-flex-all-every")):
        entries = []
        for row in (rows[probes_key], rows[every_key]):
            assert row.config is not None and row.static
            process = ModelslimConfig.model_validate(row.config).spec.process
            entries.append(next(entry for entry in process if isinstance(entry, FlexSmoothQuant)))
        assert [entry.ext.search_tokens for entry in entries] == ["probes", "all"]
        assert entries[0].ext.sites == entries[1].ext.sites
        assert rows[every_key].config["spec"]["process"][1:] == rows[probes_key].config["spec"]["process"][1:]
