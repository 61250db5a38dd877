"""End-to-end fixtures: kmock with our resources, the operator, and a fake node whose PVCs are tmp dirs.

The emulator helpers live with the operator tests (``tests/operator/emulator.py``); this folder
imports them from there rather than keeping a second copy.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock as kmocklib
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from emulator import declare_resources, operator_running, operator_settings
from kubelet import FakeNode


@pytest.fixture()
def cluster(kmock: kmocklib.KubernetesEmulator) -> kmocklib.KubernetesEmulator:
    return declare_resources(kmock)


@pytest.fixture()
def start_operator(cluster: kmocklib.KubernetesEmulator) -> Callable[..., contextlib.AbstractAsyncContextManager[None]]:
    """``async with start_operator(**settings): ...`` runs kopf with our handlers against ``cluster``."""
    def start(**overrides: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return operator_running(operator_settings(cluster, **overrides))
    return start


@pytest.fixture()
def node(cluster: kmocklib.KubernetesEmulator, tmp_path: Path) -> FakeNode:
    """A fake node with PVCs ``models`` and ``quantized`` (empty tmp dirs) and per-pod scratch space."""
    claims = {name: tmp_path / "pvc" / name for name in ("models", "quantized")}
    for path in claims.values():
        path.mkdir(parents=True)
    return FakeNode(api_url=str(cluster.url), claims=claims, workdir=tmp_path / "node")
