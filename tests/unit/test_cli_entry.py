"""The process entry point: it leaves with os._exit after flushing, so nothing may be lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from quantjob.api.crd import render_crd


def test_entry_flushes_everything_before_leaving_fast() -> None:
    result = subprocess.run([sys.executable, "-m", "quantjob.cli", "crd", "-o", "-"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == render_crd().strip()  # all of it, through a pipe (block-buffered)


def test_entry_keeps_the_exit_code_and_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = subprocess.run([sys.executable, "-m", "quantjob.cli", "validate", str(missing)],
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert str(missing) in result.stderr
