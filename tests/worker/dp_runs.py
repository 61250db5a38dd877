"""Shared by the data-parallel tests: tiny models, ``quantjob quantize`` runs, output comparison."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from quantjob.worker.model.demo import build_demo_model, write_calibration_jsonl

CHILD_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def tiny_model(root: Path, family: str, *, num_layers: int = 2) -> Path:
    return build_demo_model(root / f"{family}-{num_layers}", family=family, num_layers=num_layers,
                            hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, seed=3)


def calibration(root: Path, samples: int = 7) -> Path:
    return write_calibration_jsonl(root / f"calib-{samples}.jsonl", samples, seed=5, min_words=4, max_words=24)


def quantize_argv(model: Path, save: Path, calib: Path, devices: str, quant_type: str) -> list[str]:
    return ["quantize", "--model_path", str(model), "--save_path", str(save), "--device", devices,
            "--quant_type", quant_type, "--calib_file", str(calib), "--error_samples", "3"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "JOB_COMPLETION_INDEX", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env.update(CHILD_ENV)
    return env


def start_quantize(argv: list[str]) -> subprocess.Popen[str]:
    """``quantjob quantize`` as a user would start it (its own process; the launcher inside)."""
    return subprocess.Popen([sys.executable, "-m", "quantjob.cli", *argv], env=child_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_quantize(argv: list[str], timeout: float = 300) -> str:
    proc = start_quantize(argv)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"quantjob {' '.join(argv)} failed ({proc.returncode}):\n{out}"
    return out


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of the bytes, for every file under ``root`` (hidden ones included)."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


PROVENANCE = "quant_provenance.json"   # records the world size, runner and threads: the one file that differs
MARKER = ".quantjob-complete"


def _marker_without_provenance(root: Path) -> dict[str, object]:
    marker = json.loads((root / MARKER).read_text())
    marker["files"] = {name: digest for name, digest in marker["files"].items() if not name.endswith(PROVENANCE)}
    return marker


def assert_same_tree(expected: Path, actual: Path, *, same_layout: bool = False) -> None:
    """Every file byte-identical, but for ``quant_provenance.json`` (and the marker's line for it)
    unless ``same_layout`` (the same world size, runner and threads made both)."""
    want, got = tree_digest(expected), tree_digest(actual)
    assert sorted(got) == sorted(want), f"{actual} has other files than {expected}"
    loose = set() if same_layout else {name for name in want if name.endswith((PROVENANCE, MARKER))}
    differ = [name for name in want if want[name] != got[name] and name not in loose]
    assert not differ, f"{actual} differs from {expected} in: {differ}"
    for name in loose:
        if name.endswith(MARKER):
            root = name.removesuffix(MARKER)
            assert _marker_without_provenance(expected / root) == _marker_without_provenance(actual / root), name
