"""Both ``pip install .`` (a wheel) and ``pip install -e .`` import all three subpackages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

SUBPACKAGES = ("quantjob.api", "quantjob.operator", "quantjob.worker", "quantjob.cli", "quantjob.formats",
               "quantjob.families")
IMPORT_ALL = ("import importlib, operator, quantjob; "
              + "; ".join(f"importlib.import_module({m!r})" for m in SUBPACKAGES)
              + "; assert operator.add(1, 2) == 3; print(quantjob.__file__)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def test_installed_package_imports_outside_the_repo(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=tmp_path, env=_env(),
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_wheel_installs_and_imports_in_a_fresh_venv(tmp_path: Path) -> None:
    # Build from a copy: an in-tree build/ directory could carry stale files into the wheel.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "tests", "bench", ".venv", "out", ".hypothesis"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(source)], cwd=tmp_path, env=_env(),
                           check=False, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("quantjob-*.whl")
    listed = zipfile.ZipFile(wheel).namelist()
    for package in SUBPACKAGES:
        assert f"{package.replace('.', '/')}/__init__.py" in listed
    assert not any(name.startswith(("operator/", "worker/", "api/")) for name in listed), "top-level shadowing"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                             cwd=tmp_path, env=_env(), check=False, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    done = subprocess.run([str(python), "-c", IMPORT_ALL], cwd=tmp_path, env=_env(),
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().is_relative_to(venv.resolve()), \
        f"imported {done.stdout.strip()}, not the wheel installed in {venv}"
    cli = subprocess.run([str(venv / "bin" / "quantjob"), "crd", "--output", "-"], cwd=tmp_path, env=_env(),
                         check=False, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "kind: CustomResourceDefinition" in cli.stdout, cli.stderr
