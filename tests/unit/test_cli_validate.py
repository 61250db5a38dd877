from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, invalid_example_files, valid_example_files

from quantjob.cli import main

MANIFEST = """\
apiVersion: quantjob.io/v1alpha1
kind: QuantJob
metadata: {name: qwen, namespace: ml}
spec:
  model: {pvc: models, path: Qwen2.5-7B}
  output: {pvc: quantized, path: Qwen2.5-7B-w8a8}
  devices: {type: npu, count: 4}
  config:
    apiversion: modelslim_v1
    spec:
      runner: dp_layer_wise
      process:
        - type: linear_quant
          qconfig:
            act: {scope: per_tensor, dtype: int8, symmetric: false, method: minmax}
            weight: {scope: per_channel, dtype: int8, symmetric: true, method: minmax}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["validate", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def write(tmp_path: Path, text: str, name: str = "doc.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_there_are_enough_examples() -> None:
    assert len(valid_example_files()) >= 4
    assert len(invalid_example_files()) >= 12


@pytest.mark.parametrize("path", valid_example_files(), ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.parametrize("devices", [None, "1", "3"])
def test_examples_pass(capsys: pytest.CaptureFixture[str], path: Path, devices: str | None) -> None:
    code, out = run(capsys, str(path), *(["--devices", devices] if devices else []))
    assert code == 0, out


@pytest.mark.parametrize("path", invalid_example_files(), ids=lambda p: p.name)
def test_invalid_examples_fail_naming_the_path(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    expect = re.search(r"^# expect: (\S+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
    assert expect, f"{path.name} needs a '# expect: <path>' line"
    code, out = run(capsys, str(path))
    assert code == 1, out
    assert any(line.startswith(f"{expect.group(1)}: ") for line in out.splitlines()), out


def test_manifest_and_devices_override(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, MANIFEST)
    code, out = run(capsys, path)
    assert code == 0 and "runner dp_layer_wise, world size 4" in out
    code, out = run(capsys, path, "--devices", "1")   # the override wins: dp falls back, with a warning
    assert code == 0
    assert "spec.config.spec.runner: warning: dp_layer_wise needs more than one device" in out
    assert "runner layer_wise, world size 1" in out


def test_warnings_alone_exit_zero_and_errors_exit_one(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    warn = MANIFEST.replace("count: 4", "count: 1")
    assert run(capsys, write(tmp_path, warn))[0] == 0
    broken = MANIFEST.replace("runner: dp_layer_wise", "runner: layer_wise")
    code, out = run(capsys, write(tmp_path, broken))
    assert code == 1 and out.startswith("spec.config.spec.runner: layer_wise uses one device but 4")


def test_every_document_of_a_stream_is_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = MANIFEST.replace("path: Qwen2.5-7B}", "path: /abs}")
    code, out = run(capsys, write(tmp_path, f"{MANIFEST}---\n{bad}---\n"))
    assert code == 1
    assert "(document 1 of 2): ok" in out and "(document 2 of 2): invalid" in out
    assert "spec.model.path: path '/abs' must be relative" in out


def test_yaml_syntax_error_names_file_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "apiversion: modelslim_v1\nspec:\n  process: [\n    {type: linear_quant\n")
    code, out = run(capsys, path)
    assert code == 1
    assert re.match(rf"{re.escape(path)}:\d+: invalid YAML: ", out), out


def test_missing_and_empty_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, str(tmp_path / "absent.yaml"))
    assert code == 1 and "cannot read" in out
    code, out = run(capsys, write(tmp_path, "# nothing\n"))
    assert code == 1 and "no YAML document" in out


def test_devices_must_be_positive(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["validate", write(tmp_path, MANIFEST), "--devices", "0"])
    assert caught.value.code == 2


def test_console_script_in_a_subprocess(tmp_path: Path) -> None:
    path = write(tmp_path, MANIFEST.replace("count: 4", "count: 2"))
    done = subprocess.run([sys.executable, "-m", "quantjob.cli", "validate", path],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "world size 2" in done.stdout


# --- bounded reading (issue 14, item 11) -----------------------------------------------------------

def _bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip("abcdefghij", "bcdefghijk"[: levels - 1], strict=False):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("text", "needle"), [
    ("spec: " + "[" * 20000 + "]" * 20000 + "\n", "nest more than 64 deep"),      # was a RecursionError
    ("spec:\n" + "".join("  " * depth + "- \n" for depth in range(1, 200)), "nest more than 64 deep"),
    (_bomb(), "more than 20000 values once its aliases are expanded"),             # ran for minutes
    ("apiversion: modelslim_v1\nmetadata:\n  junk:\n" + "    - x\n" * 1_500_000, "larger than the 3145728 bytes"),
], ids=["deep-flow", "deep-block", "alias-bomb", "10-MB"])
def test_hostile_yaml_is_refused_quickly_with_a_message(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       text: str, needle: str) -> None:
    path = write(tmp_path, text)
    started = time.perf_counter()
    code, out = run(capsys, path)
    assert code == 1 and needle in out and out.startswith(path), out
    assert time.perf_counter() - started < 1.0  # a 10 MB file took 30-50 s


def test_hostile_yaml_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(_bomb().encode())))
    code, out = run(capsys, "-")
    assert code == 1 and "more than 20000 values" in out


def test_anchors_within_the_limits_still_work(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, write(tmp_path, _bomb(levels=3) + "apiversion: modelslim_v1\nspec:\n  process:\n"
                                  "    - {type: linear_quant, qconfig: {weight: {scope: per_channel}}}\n"))
    assert code == 0, out


@pytest.mark.parametrize(("name", "devices"), [("Qwen", None), ("a.b", None), ("x" * 62, "3")])
def test_validate_applies_the_webhooks_name_rules(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  name: str, devices: str | None) -> None:
    """The webhook refused these names (not DNS labels, or pod hostnames too long for the device
    count) while validate admitted them: the fuzz test's first disagreement."""
    code, out = run(capsys, write(tmp_path, MANIFEST.replace("name: qwen", f"name: {name}")),
                    *(["--devices", devices] if devices else []))
    assert code == 1 and "metadata.name" in out, out


def test_unknown_top_level_keys_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, write(tmp_path, MANIFEST + "extra: 1\nstatus: {phase: Running}\n"))
    assert code == 1 and "extra: unknown field 'extra'" in out and "status:" not in out, out
