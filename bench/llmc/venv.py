"""Create (once) the virtual environment llm-compressor runs in: ``python -m bench.llmc.venv``.

torch is installed first and alone, pinned to exactly the version this project uses (2.13.0), so
pip resolves llm-compressor against it instead of pulling a multi-GB accelerator build; then
``llmcompressor`` at the version the benchmarks were written for. Nothing here touches the
project's own environment.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import venv
from pathlib import Path

VENV_DIR = Path(__file__).resolve().parent.parent / ".venv-llmc"
TORCH = "torch==2.13.0"
LLMCOMPRESSOR = "llmcompressor==0.14.0.1"


def venv_python(path: Path = VENV_DIR) -> Path:
    return path / "bin" / "python"


def _usable(python: Path) -> bool:
    if not python.is_file():
        return False
    probe = subprocess.run([str(python), "-c", "import llmcompressor, torch"], capture_output=True, timeout=600,
                           check=False)
    return probe.returncode == 0


QUANTIZE_SCRIPT = Path(__file__).resolve().parent / "quantize.py"


def llmc_python() -> Path | None:
    """The llm-compressor venv's python when it exists (``python -m bench.llmc.venv`` makes it), or the
    one ``QUANTJOB_LLMC_PYTHON`` names; None when there is none (the benchmarks then skip its rows)."""
    override = os.environ.get("QUANTJOB_LLMC_PYTHON")
    python = Path(override) if override else venv_python()
    return python if python.is_file() and QUANTIZE_SCRIPT.is_file() else None


def ensure_venv(path: Path = VENV_DIR, *, log: Path | None = None) -> tuple[Path | None, str]:
    """(the venv's python, "") when llm-compressor imports there, creating the venv if needed;
    (None, why not) when it cannot be made (no network, no wheel for this platform, ...)."""
    python = venv_python(path)
    if _usable(python):
        return python, ""
    log = log or path.with_suffix(".log")
    try:
        if not python.is_file():
            venv.EnvBuilder(with_pip=True, clear=True).create(path)
        with log.open("w", encoding="utf-8") as out:
            for packages in ([TORCH], [LLMCOMPRESSOR]):
                done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], stdout=out,
                                      stderr=subprocess.STDOUT, timeout=3600, check=False)
                if done.returncode != 0:
                    return None, f"pip install {' '.join(packages)} failed in {path} (log: {log})"
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"cannot create {path}: {error}"
    if not _usable(python):
        return None, f"llmcompressor does not import in {path} (log: {log})"
    return python, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=VENV_DIR)
    args = parser.parse_args(argv)
    python, why = ensure_venv(args.path)
    if python is None:
        print(f"llm-compressor venv: {why}", file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
