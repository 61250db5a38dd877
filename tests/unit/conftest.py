"""Shared data for the api/CLI unit tests: paths of the example and practice configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PRACTICE = Path(__file__).resolve().parent / "data" / "practice"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def valid_example_files() -> list[Path]:
    """Every YAML file under examples/ except the deliberately invalid ones."""
    return sorted(p for p in EXAMPLES.rglob("*.yaml") if "invalid" not in p.relative_to(EXAMPLES).parts)


def invalid_example_files() -> list[Path]:
    return sorted((EXAMPLES / "invalid").glob("*.yaml"))


def practice_files() -> list[Path]:
    return sorted(PRACTICE.glob("*.yaml"))
