"""``quantjob quantize``: argument checks, config problems before any weight is read, and a real
end-to-end run through the ascendv1 saver (the same run again is a no-op; another run on a
complete output is refused unless --overwrite)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quantjob.api import exit_codes
from quantjob.cli import build_parser, main
from quantjob.worker.entry import WorkerArgs as QuantizeArgs
from quantjob.worker.loop.phase_times import LOG_PREFIX, ORDER, parse_phase_times


def _base(model: Path, out: Path, calib: Path) -> list[str]:
    return ["quantize", "--model_path", str(model), "--save_path", str(out), "--calib_file", str(calib),
            "--calib_samples", "4", "--max_length", "32"]


def test_exactly_one_of_quant_type_and_config(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["quantize", "--model_path", "m", "--save_path", "o", "--quant_type", "w8a8", "--config_path", "c"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["quantize", "--model_path", "m", "--save_path", "o"])


def test_unknown_quant_type_and_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", "--model_path", "m", "--save_path", "o", "--quant_type", "w3a3"]) == 2
    assert "w8a8" in capsys.readouterr().err
    assert main(["quantize", "--model_path", "m", "--save_path", "o", "--quant_type", "w8a8", "--device", "gpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_config_problems_exit_2_before_loading(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("apiversion: modelslim_v1\nspec:\n  process:\n  - type: linear_quant\n    qconfig:\n"
                      "      weight: {scope: per_group, dtype: int4, symmetric: true, method: minmax}\n")
    out = tmp_path / "out"
    code = main([*_base(tiny_model("llama", 2), out, calib_jsonl(4)), "--config_path", str(config)])
    assert code == 2
    assert "spec.process[0].qconfig.weight.ext.group_size" in capsys.readouterr().err
    assert not out.exists()
    config.write_text("spec: [unclosed\n")
    assert main([*_base(tiny_model("llama", 2), out, calib_jsonl(4)), "--config_path", str(config)]) == 2
    assert f"{config}:2: invalid YAML" in capsys.readouterr().err
    config.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(  # an alias bomb: refused, not built
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)))
    assert main([*_base(tiny_model("llama", 2), out, calib_jsonl(4)), "--config_path", str(config)]) == 2
    assert "more than 20000 values once its aliases are expanded" in capsys.readouterr().err


def test_argv_round_trips() -> None:
    args = QuantizeArgs(model_path=Path("m"), save_path=Path("o"), quant_type="w8a8", device="cpu:0,1",
                        trust_remote_code=True, next_layer_input="quantized", error_samples=3)
    parsed = build_parser().parse_args(args.argv())
    again = QuantizeArgs.model_validate({k: v for k, v in vars(parsed).items() if k in QuantizeArgs.model_fields})
    assert again == args


def test_end_to_end_with_the_ascend_saver(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("quantjob.worker.savers")
    model, calib, out = tiny_model("qwen3", 2), calib_jsonl(4), tmp_path / "out"
    config = tmp_path / "mixed.yaml"
    config.write_text(
        "apiversion: modelslim_v1\n"
        "w8: &w8 {weight: {scope: per_channel, dtype: int8, symmetric: true, method: minmax}}\n"
        "spec:\n  process:\n  - type: group\n    configs:\n"
        "    - {type: linear_quant, qconfig: *w8, include: ['*self_attn*']}\n"
        "    - type: linear_quant\n      include: ['*mlp*']\n      exclude: ['*down_proj']\n"
        "      qconfig:\n        act: {scope: per_token, dtype: int8, symmetric: true, method: minmax}\n"
        "        weight: {scope: per_channel, dtype: int8, symmetric: true, method: minmax}\n"
        "  save: [{type: ascendv1_saver}]\n")
    assert main([*_base(model, out, calib), "--config_path", str(config)]) == 0
    captured = capsys.readouterr()
    assert "relative output error" in captured.out
    # where the time went, just before the summary line when any phase took 0.05 s (on this tiny
    # model often none does): the loop's phases, within the run's own time
    lines = captured.out.strip().splitlines()
    assert " layers, " in lines[-1] and all(not line.startswith(LOG_PREFIX) for line in lines[:-2])
    if lines[-2].startswith(LOG_PREFIX):
        phases = parse_phase_times(lines[-2][len(LOG_PREFIX):])
        assert set(phases) <= {*ORDER, "other"}
        total = float(lines[-1].rsplit(" in ", 1)[1].rstrip("s"))
        assert sum(phases.values()) == pytest.approx(total, abs=0.05 * (len(ORDER) + 1))
    table = json.loads((out / "quant_errors.json").read_text())
    assert [row["quantized_linears"] for row in table["layers"]] == [6, 6]
    description = json.loads((out / "quant_model_description.json").read_text())
    assert description["model.layers.0.self_attn.q_proj.weight"] == "W8A16"
    assert description["model.layers.0.mlp.down_proj.weight"] == "FLOAT"
    assert description["model.layers.1.self_attn.q_norm.weight"] == "FLOAT"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    # the same run again (a retried pod of a finished job): success, nothing rewritten (issue 14, item 13)
    assert main([*_base(model, out, calib), "--config_path", str(config)]) == 0
    assert "nothing was rewritten" in capsys.readouterr().out
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    # another run is refused unless --overwrite
    other = [*_base(model, out, calib), "--config_path", str(config), "--calib_samples", "3"]
    assert main(other) == exit_codes.INPUT
    err = capsys.readouterr().err
    assert "quantjob: error:" in err and "--overwrite" in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    assert main([*other, "--overwrite"]) == 0


def test_progress_lines_and_error_table(caplog: pytest.LogCaptureFixture) -> None:
    import io
    import logging

    from quantjob.worker.progress import TerminalProgress, format_error_table

    progress = TerminalProgress(stream=io.StringIO())  # not a TTY: log lines
    with caplog.at_level(logging.INFO, logger="quantjob.worker"):
        progress.start(2)
        progress.layer_done(1, 2, 0.0123)
        progress.layer_done(2, 2, None)
        progress.finish(True, "done")
    assert "layer 1/2 done (relative output error 1.230e-02" in caplog.text and "layer 2/2 done" in caplog.text
    text = format_error_table({"samples": 3, "layers": [{"layer": 0, "quantized_linears": 7, "relative_error": 0.5},
                                                        {"layer": 1, "quantized_linears": 0, "relative_error": None}]})
    assert "5.0000e-01" in text and "first 3 calibration samples" in text


def test_config_json_is_read_once_in_a_run(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry point's checks read the model's config.json, and the run (the adapter, the FP8
    layout, the preflight, the run id, the provenance) takes that mapping; the saver still copies
    the file as bytes, and transformers reads it to build the skeleton (neither parses it as ours)."""
    model = tiny_model("llama", 2)
    reads: list[Path] = []
    read_text = Path.read_text

    def counting(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == model / "config.json":
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    assert main([*_base(model, tmp_path / "out", calib_jsonl(4)), "--quant_type", "w8a16"]) == 0
    assert len(reads) == 1


def test_group_env_sets_the_world_size(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A pod with one device but WORLD_SIZE=2 resolves as dp_layer_wise (layer_wise is refused)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    config = tmp_path / "c.yaml"
    config.write_text("apiversion: modelslim_v1\nspec:\n  runner: layer_wise\n  process:\n  - type: linear_quant\n"
                      "    qconfig: {weight: {scope: per_channel}}\n")
    out = tmp_path / "out"
    assert main([*_base(tiny_model("llama", 2), out, calib_jsonl(4)), "--config_path", str(config)]) == 2
    assert "layer_wise uses one device but 2 are requested" in capsys.readouterr().err
    assert not out.exists()


def test_half_a_group_environment_is_refused_before_any_work(tiny_model: Callable[..., Path],
                                                             calib_jsonl: Callable[..., Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """WORLD_SIZE without a rank would make every pod rank 0: refused, naming the variables."""
    for name in ("RANK", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    out = tmp_path / "out"
    assert main([*_base(tiny_model("llama", 2), out, calib_jsonl(4)), "--quant_type", "w8a8"]) == 2
    assert "neither RANK nor JOB_COMPLETION_INDEX is set" in capsys.readouterr().err
    assert not out.exists()
