"""Bad input through the command line: one ``quantjob: error:`` line naming the file and the fix,
exit code 3 (``exit_codes.INPUT``: the operator fails the QuantJob at once, no restart), and
nothing written at the save path."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantjob.api import exit_codes
from quantjob.cli import main


def _quantize(model: Path, out: Path, calib: Path | None, *extra: str) -> list[str]:
    argv = ["quantize", "--model_path", str(model), "--save_path", str(out), "--quant_type", "w8a8",
            "--calib_samples", "4", "--max_length", "32", *extra]
    return argv + (["--calib_file", str(calib)] if calib else [])


def _copy(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "model"))


def _expect_error(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str,
                  code: int = exit_codes.INPUT) -> str:
    assert main(argv) == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("quantjob:")]
    assert len(lines) == 1 and lines[0].startswith("quantjob: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def model(tiny_model: Callable[..., Path]) -> Path:
    return tiny_model("llama", 2)


def test_missing_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    _expect_error(_quantize(tmp_path / "nope", out, None), capsys, str(tmp_path / "nope"), "--model_path")
    assert not out.exists()


def test_missing_and_broken_config_json(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy, out = _copy(model, tmp_path), tmp_path / "out"
    (copy / "config.json").write_text("{not json")
    _expect_error(_quantize(copy, out, None), capsys, str(copy / "config.json"))
    (copy / "config.json").unlink()
    _expect_error(_quantize(copy, out, None), capsys, str(copy / "config.json"), "missing")
    assert not out.exists()


def test_unsupported_architecture(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy, out = _copy(model, tmp_path), tmp_path / "out"
    config = json.loads((copy / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (copy / "config.json").write_text(json.dumps(config))
    _expect_error(_quantize(copy, out, None), capsys, "config.json", "gpt2", "llama, mistral, qwen2, qwen3")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    copy, out = _copy(model, tmp_path), tmp_path / "out"
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" + data[8:])
    _expect_error(_quantize(copy, out, None), capsys, str(weights))
    assert not out.exists()


@pytest.mark.parametrize(("text", "needle"), [("", "no usable text"), ('{"text": "  "}\n', "no usable text"),
                                              ("{broken\n", "not valid JSON")])
def test_bad_calibration(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                         needle: str) -> None:
    calib, out = tmp_path / "calib.jsonl", tmp_path / "out"
    calib.write_text(text)
    _expect_error(_quantize(model, out, calib), capsys, str(calib), needle)
    assert not out.exists()


def test_save_path_is_a_file(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.write_text("x")
    _expect_error(_quantize(model, out, None), capsys, str(out), "not a directory")
    _expect_error(_quantize(model, out / "sub", None), capsys, str(out), "not a directory")
    assert out.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_save_path_not_writable(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        _expect_error(_quantize(model, parent / "out", None), capsys, "not writable")
    finally:
        parent.chmod(0o755)
    assert not (parent / "out").exists()


def test_save_path_is_the_model_dir(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error(_quantize(model, model, None), capsys, "model directory")


# --- issue 14: damaged weights, a full volume, an output inside the model -----------------------

def _damaged(model: Path, tmp_path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    copy = _copy(model, tmp_path)
    tensors = load_file(copy / "model.safetensors")
    change(tensors)
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    return copy


def _set(name: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name].view(-1)[3] = value
    return change


@pytest.mark.parametrize(("tensor", "value", "quant_type", "needle"), [
    # the last layer: the run exited 0 with NaN scales and an error of 0.0
    ("model.layers.1.mlp.down_proj.weight", float("nan"), "w8a16", "1 NaN"),
    ("model.layers.1.mlp.down_proj.weight", float("nan"), "w8a8", "1 NaN"),
    # an earlier layer: it crashed with "no calibration tokens reached it"
    ("model.layers.0.self_attn.v_proj.weight", float("inf"), "w8a8", "1 infinite"),
    ("model.layers.0.input_layernorm.weight", float("-inf"), "w8a8", "1 infinite"),
    ("model.embed_tokens.weight", float("nan"), "w8a8", "1 NaN"),
])
def test_non_finite_weights_stop_the_run_naming_tensor_and_layer(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tensor: str, value: float,
        quant_type: str, needle: str) -> None:
    copy, out = _damaged(model, tmp_path, _set(tensor, value)), tmp_path / "out"
    argv = [a if a != "w8a8" else quant_type for a in _quantize(copy, out, None)]
    layer = tensor.split(".")[2] if ".layers." in tensor else None
    line = _expect_error(argv, capsys, repr(tensor), needle, str(copy / "model.safetensors"))
    assert (f"(decoder layer {layer})" in line) if layer else "decoder layer" not in line
    assert not (out / ".quantjob-complete").exists() and not (out / "quant_model_description.json").exists()


def test_overflowing_activations_stop_the_run_naming_the_linear(model: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Finite weights whose activations overflow bf16: the next linear's inputs are infinite."""
    def blow_up(tensors: dict[str, torch.Tensor]) -> None:
        for name in ("model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"):
            tensors[name] = (tensors[name].float() * 1e30).to(tensors[name].dtype)

    copy, out = _damaged(model, tmp_path, blow_up), tmp_path / "out"
    _expect_error(_quantize(copy, out, None), capsys, "inputs of model.layers.0.mlp.down_proj (decoder layer 0)",
                  "NaN or infinite")


@pytest.mark.parametrize(("change", "needles"), [
    (lambda t: t.__setitem__("model.layers.1.mlp.up_proj.weight", torch.zeros(100, 64, dtype=torch.bfloat16)),
     ("model.layers.1.mlp.up_proj.weight (decoder layer 1)", "shape [100, 64]", "[128, 64]")),
    (lambda t: t.__setitem__("model.layers.1.mlp.up_proj.weight", t["model.layers.1.mlp.up_proj.weight"].float()),
     ("model.layers.1.mlp.up_proj.weight (decoder layer 1)", "is F32", "BF16")),
    (lambda t: t.__setitem__("model.layers.0.self_attn.o_proj.weight",
                             t["model.layers.0.self_attn.o_proj.weight"].to(torch.int32)),
     ("model.layers.0.self_attn.o_proj.weight (decoder layer 0)", "is I32")),
    (lambda t: t.pop("model.layers.1.post_attention_layernorm.weight"),
     ("missing model.layers.1.post_attention_layernorm.weight",)),
])
def test_wrong_shapes_and_dtypes_are_one_line_before_any_compute(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: Callable[[dict[str, torch.Tensor]], None], needles: tuple[str, ...]) -> None:
    copy, out = _damaged(model, tmp_path, change), tmp_path / "out"
    _expect_error(_quantize(copy, out, None), capsys, "does not match config.json", *needles)
    assert not out.exists()  # refused before the output is claimed


@pytest.mark.parametrize("inside", ["w8a8", "./sub/../w8a8", "."])
def test_save_path_inside_the_model_dir(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        inside: str) -> None:
    copy = _copy(model, tmp_path)
    before = sorted(p.name for p in copy.iterdir())
    _expect_error(_quantize(copy, copy / inside, None), capsys, "model directory", str(copy))
    assert sorted(p.name for p in copy.iterdir()) == before


def test_save_path_containing_the_model_dir(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(model, tmp_path)
    _expect_error(_quantize(copy, tmp_path, None), capsys, "contains the model directory")


def test_a_full_output_volume_during_assembly_is_one_line(model: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.worker.savers import assemble

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(assemble, "write_synced", full)
    out = tmp_path / "out"
    _expect_error(_quantize(model, out, None), capsys, "output volume is full", "No space left on device",
                  str(out), "--save_path")
    assert not (out / ".quantjob-complete").exists()


@pytest.mark.parametrize(("extra", "env", "needle"), [
    (("--collective_timeout", "0"), {}, "--collective_timeout"),
    (("--collective_timeout", "nan"), {}, "--collective_timeout"),
    ((), {"QUANTJOB_COLLECTIVE_TIMEOUT": "soon"}, "QUANTJOB_COLLECTIVE_TIMEOUT='soon'"),
    ((), {"QUANTJOB_COLLECTIVE_TIMEOUT": "-5"}, "QUANTJOB_COLLECTIVE_TIMEOUT='-5'"),
])
def test_bad_collective_timeouts_are_usage_errors(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...],
                                                 env: dict[str, str], needle: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(_quantize(model, tmp_path / "out", None, *extra)) == exit_codes.USAGE
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- issue 27: worker edges ---------------------------------------------------------------------

def test_a_calibration_directory_is_named_as_one(model: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    calib, out = tmp_path / "calib", tmp_path / "out"
    calib.mkdir()
    line = _expect_error(_quantize(model, out, calib), capsys, str(calib), "is a directory", "--calib_file")
    assert "does not exist" not in line
    assert not (out / ".quantjob-complete").exists()


@pytest.mark.parametrize("flag", ["--model_path", "--save_path", "--calib_file"])
def test_a_name_over_255_bytes_is_bad_input_naming_the_path(model: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str], flag: str) -> None:
    long = tmp_path / ("n" * 256) / "x"
    paths = {"--model_path": model, "--save_path": tmp_path / "out", "--calib_file": None, flag: long}
    argv = _quantize(paths["--model_path"], paths["--save_path"], paths["--calib_file"])
    _expect_error(argv, capsys, flag, str(long), "256 bytes", "255")
    assert not (tmp_path / "out").exists()


def test_a_full_volume_while_claiming_the_output_is_one_line(model: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.worker.savers import directory

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(directory, "atomic_write_bytes", full)
    out = tmp_path / "out"
    line = _expect_error(_quantize(model, out, None), capsys, "output volume is full", "No space left on device",
                         str(out), "--save_path")
    assert "permissions" not in line


def test_an_index_entry_out_of_the_model_directory_is_bad_input(model: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    copy, out = _copy(model, tmp_path), tmp_path / "out"
    outside = tmp_path / "outside.safetensors"
    (copy / "model.safetensors").rename(outside)
    names = list(load_file(outside))
    index = copy / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {name: "../outside.safetensors" for name in names}}))
    _expect_error(_quantize(copy, out, None), capsys, str(index), "'../outside.safetensors'")
    assert not out.exists()
