"""msModelSlim's command line, verbatim: `msmodelslim quant ...` runs as `quantjob quant ...` or
`quantjob quantize ...` (parsing only; tests/worker/test_cli_msmodelslim_run.py runs it)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from quantjob.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
# The seed's command line, as msModelSlim users write it (model and output paths aside).
SEED = ("msmodelslim quant --model_path M --save_path S --device npu:0,1,2,3 --model_type Qwen2.5-7B "
        "--quant_type w8a8 --trust_remote_code True")


def parse(command: str) -> dict[str, object]:
    argv = shlex.split(command)
    assert argv[0] == "quantjob"
    return vars(build_parser().parse_args(argv[1:]))


@pytest.mark.parametrize("program", ["quantjob quant", "quantjob quantize"])
def test_the_seed_command_line_parses_with_only_the_program_name_changed(program: str) -> None:
    args = parse(SEED.replace("msmodelslim quant", program))
    assert args["model_path"] == "M" and args["save_path"] == "S"
    assert args["device"] == "npu:0,1,2,3" and args["model_type"] == "Qwen2.5-7B"
    assert args["quant_type"] == "w8a8" and args["trust_remote_code"] is True
    assert args["run"] is parse("quantjob quantize --model_path m --save_path s --quant_type w8a8")["run"]


@pytest.mark.parametrize("flag, expected", [
    ("--trust_remote_code True", True),
    ("--trust_remote_code False", False),
    ("--trust_remote_code true", True),
    ("--trust_remote_code FALSE", False),
    ("--trust_remote_code", True),      # the bare flag (what the operator's pod command passes)
    ("", False),
])
def test_trust_remote_code_takes_msmodelslim_booleans_and_the_bare_flag(flag: str, expected: bool) -> None:
    args = parse(f"quantjob quantize --model_path m --save_path s --quant_type w8a8 {flag}")
    assert args["trust_remote_code"] is expected
    # the bare flag also works before another flag
    args = parse(f"quantjob quant {flag} --model_path m --save_path s --quant_type w8a8")
    assert args["trust_remote_code"] is expected


@pytest.mark.parametrize("value", ["yes", "1", "Tru"])
def test_other_values_are_refused_naming_the_flag(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["quant", "--model_path", "m", "--save_path", "s", "--quant_type", "w8a8", "--trust_remote_code", value])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "--trust_remote_code" in err and "True or False" in err


def test_help_shows_the_alias_and_the_flag_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "quantize (quant)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["quant", "--help"])
    assert "--trust_remote_code [True|False]" in capsys.readouterr().out


def test_no_msmodelslim_script_that_could_replace_the_real_one() -> None:
    """msModelSlim installs a `msmodelslim` script; one of ours in the same environment would overwrite
    it (or be overwritten). Users change one word instead (README: Quantize a model)."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    scripts = [line.split("=")[0].strip() for line in section.splitlines() if "=" in line]
    assert scripts == ["quantjob"]
    assert "msmodelslim quant" in (ROOT / "README.md").read_text(encoding="utf-8")
