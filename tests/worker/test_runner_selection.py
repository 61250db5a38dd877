"""Runner selection through the compatibility check, as ``quantjob quantize`` applies it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dp_runs import (
    assert_same_tree,
    calibration,
    quantize_argv,
    run_quantize,
    tiny_model,
)

from quantjob.api import catalogue, exit_codes
from quantjob.api.presets import preset
from quantjob.cli import main


def _config_file(tmp_path: Path, runner: str, process: list[dict] | None = None) -> Path:
    data = preset("w8a8").model_dump(mode="json", exclude_none=True)
    data["spec"]["runner"] = runner
    if process is not None:
        data["spec"]["process"] = process
    path = tmp_path / f"config-{runner}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _config_argv(model: Path, save: Path, config: Path, devices: str) -> list[str]:
    return ["quantize", "--model_path", str(model), "--save_path", str(save), "--device", devices,
            "--config_path", str(config)]


@pytest.mark.slow
def test_dp_with_one_device_warns_and_runs_layer_wise(tmp_path: Path) -> None:
    model = tiny_model(tmp_path, "qwen2")
    calib = calibration(tmp_path, samples=3)
    dp_out = tmp_path / "dp-on-one"
    argv = _config_argv(model, dp_out, _config_file(tmp_path, "dp_layer_wise"), "cpu")
    log = run_quantize([*argv, "--calib_file", str(calib), "--error_samples", "3"])
    assert "spec.runner" in log and "falling back to layer_wise" in log, log
    reference = tmp_path / "layer-wise"
    run_quantize(quantize_argv(model, reference, calib, "cpu", "w8a8"))
    assert_same_tree(reference, dp_out)


@pytest.fixture
def garbage_model(tmp_path: Path) -> Path:
    """A model directory whose config is fine but whose weights cannot be read at all."""
    model = tiny_model(tmp_path, "llama")
    for weights in model.glob("*.safetensors"):
        weights.write_bytes(b"\xff" * 64)
    return model


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any rank would be started or any layer run."""
    from quantjob.worker.group import launcher
    from quantjob.worker.loop import runner

    def refuse(*args: object, **kwargs: object) -> int:
        raise AssertionError("work started although the config was refused")

    monkeypatch.setattr(launcher, "launch", refuse)
    monkeypatch.setattr(runner, "run_quantization", refuse)


def test_dp_with_a_processor_not_marked_distributed_is_refused_before_loading(
        tmp_path: Path, garbage_model: Path, no_work: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # A processor quantjob implements but that may not run under dp_layer_wise (test-only entry).
    single_only = catalogue.Algorithm("single_device_only", "processor", "test-only", distributed=False)
    monkeypatch.setitem(catalogue.PROCESSORS, single_only.name, single_only)
    config = _config_file(tmp_path, "auto", [
        preset("w8a8").model_dump(mode="json", exclude_none=True)["spec"]["process"][0],
        {"type": "single_device_only"},
    ])
    code = main(_config_argv(garbage_model, tmp_path / "out", config, "cpu:0,1"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "spec.process[1].type" in err and "'single_device_only'" in err, err
    assert "cannot run under dp_layer_wise" in err and "linear_quant" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("processor", ["awq", "gptq"])
def test_dp_with_an_unimplemented_processor_is_refused_before_loading(
        tmp_path: Path, garbage_model: Path, no_work: None, processor: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _config_file(tmp_path, "dp_layer_wise", [{"type": processor}])
    code = main(_config_argv(garbage_model, tmp_path / "out", config, "cpu:0,1"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "spec.process[0].type" in err and f"{processor!r}" in err, err
    assert not (tmp_path / "out").exists()


def test_the_garbage_weights_would_have_failed(tmp_path: Path, garbage_model: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The fixture is real: with a valid config, reading the weights fails (so the refusals above
    happened before any weight was read)."""
    config = _config_file(tmp_path, "auto")
    code = main(_config_argv(garbage_model, tmp_path / "out", config, "cpu"))
    err = capsys.readouterr().err
    assert code == exit_codes.INPUT, err
    assert "safetensors" in err.lower(), err
    assert json.loads((garbage_model / "config.json").read_text())["num_hidden_layers"] == 2
