"""The CI image stage's helpers: this machine's pip sources made visible inside a build, and the
stage's refusal to pretend when it cannot run (it says why and skips)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pip_sources() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pip_sources", ROOT / ".ci" / "pip_sources.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_sources_are_mounted_and_the_config_points_at_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    wheels, index, constraints = tmp_path / "wheels", tmp_path / "pypi" / "simple", tmp_path / "constraints.txt"
    wheels.mkdir()
    index.mkdir(parents=True)
    constraints.write_text("torch<=2.14.1\n")
    module = pip_sources()
    monkeypatch.setattr(module, "pip_settings", lambda: {
        "find-links": str(wheels), "extra-index-url": f"file://{index} https://mirror.example/simple",
        "constraint": str(constraints), "cert": str(tmp_path / "missing.pem"), "default-timeout": "180"})
    out = tmp_path / "out"
    assert module.main(out) == 0
    volumes = capsys.readouterr().out.split()
    config = (out / "pip.conf").read_text()
    assert f"--volume={out.resolve()}:/run/quantjob-pip/conf:ro" in volumes
    mounted = dict(v.removeprefix("--volume=").removesuffix(":ro").split(":") for v in volumes[1:])
    assert mounted[str(wheels)].startswith("/run/quantjob-pip/")
    assert mounted[str(tmp_path / "pypi")].startswith("/run/quantjob-pip/")  # the index with its files
    assert f"find-links = {mounted[str(wheels)]}" in config
    assert f"extra-index-url = file://{mounted[str(tmp_path / 'pypi')]}/simple https://mirror.example/simple" in config
    assert f"constraint = {mounted[str(constraints)]}" in config
    assert "default-timeout = 180" in config
    assert "cert" not in config  # a path this machine does not have is left out, not mounted


def test_environment_settings_win_over_files(monkeypatch: pytest.MonkeyPatch) -> None:
    module = pip_sources()
    listed = ":env:.find-links='/from/env'\nglobal.find-links='/from/file'\nglobal.timeout='5'\n"
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, listed, ""))
    assert module.pip_settings() == {"find-links": "/from/env", "timeout": "5"}


@pytest.mark.parametrize("how, reason", [("not-root", "needs root"), ("disabled", "QUANTJOB_CI_IMAGES=0")])
def test_stage_skips_with_the_reason(how: str, reason: str) -> None:
    command = ["bash", str(ROOT / ".ci" / "images")]
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp"}
    if how == "not-root":
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            pytest.skip("needs root and setpriv to run the stage as another user")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    else:
        env["QUANTJOB_CI_IMAGES"] = "0"
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"images: SKIPPED: {reason}" in done.stdout


def test_run_image_refuses_a_command_line_without_a_command() -> None:
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "run_image.py"), "some-image"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and "read-only" in done.stderr
