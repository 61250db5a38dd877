"""The seed's msModelSlim command line, run: `quantjob quant` with msmodelslim's flags quantizes a
model (on CPU ranks here), and with `--device npu:0,1,2,3` it gets as far as the devices."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from quantjob.cli import main

SEED = ("quant --model_path {model} --save_path {save} --device {device} --model_type Qwen2.5-7B "
        "--quant_type w8a8 --trust_remote_code True")


def test_seed_command_quantizes_a_qwen2_model(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "out"
    argv = shlex.split(SEED.format(model=tiny_model("qwen2", 2), save=save, device="cpu:0,1"))
    code = main([*argv, "--calib_file", str(calib_jsonl(4)), "--calib_samples", "4", "--max_length", "32"])
    assert code == 0, capsys.readouterr().err
    assert (save / ".quantjob-complete").is_file()
    description = json.loads((save / "quant_model_description.json").read_text())
    assert any(kind == "W8A8" for kind in description.values())


def test_seed_command_verbatim_stops_only_at_the_missing_npus(tiny_model: Callable[..., Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "out"
    code = main(shlex.split(SEED.format(model=tiny_model("qwen2", 2), save=save, device="npu:0,1,2,3")))
    err = capsys.readouterr().err
    assert code != 0
    assert "torch_npu" in err  # every flag was taken; this machine has no Ascend NPU
    assert "unrecognized arguments" not in err and "invalid choice" not in err
    assert not (save / ".quantjob-complete").exists()
