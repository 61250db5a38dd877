"""End-to-end fixtures: kmock with our resources, the operator, and a fake node whose PVCs are tmp dirs.

The emulator helpers live with the operator tests (``tests/operator/emulator.py``); this folder
imports them from there rather than keeping a second copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import kmock as kmocklib
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from emulator import cluster, start_operator  # noqa: F401  # fixtures, shared with tests/operator
from kubelet import FakeNode


@pytest.fixture()
def node(cluster: kmocklib.KubernetesEmulator, tmp_path: Path) -> FakeNode:  # noqa: F811  # the fixture
    """A fake node with PVCs ``models`` and ``quantized`` (empty tmp dirs) and per-pod scratch space."""
    claims = {name: tmp_path / "pvc" / name for name in ("models", "quantized")}
    for path in claims.values():
        path.mkdir(parents=True)
    return FakeNode(api_url=str(cluster.url), claims=claims, workdir=tmp_path / "node")
