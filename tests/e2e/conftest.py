"""End-to-end fixtures: kmock with our resources, the operator, and a fake node whose PVCs are tmp dirs.

The emulator helpers live with the operator tests (``tests/operator/emulator.py``); this folder
imports them from there rather than keeping a second copy.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import kmock as kmocklib
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from emulator import cluster, start_operator, tls_front  # noqa: F401  # fixtures, shared with tests/operator
from kubelet import FakeNode


@pytest_asyncio.fixture()
async def node(cluster: kmocklib.KubernetesEmulator, tmp_path: Path) -> AsyncIterator[FakeNode]:  # noqa: F811
    """A fake node with PVCs ``models`` and ``quantized`` (empty tmp dirs), per-pod scratch space, and
    the API server behind HTTPS as pods see it in a cluster (``KUBERNETES_SERVICE_HOST``, cluster CA)."""
    claims = {name: tmp_path / "pvc" / name for name in ("models", "quantized")}
    for path in claims.values():
        path.mkdir(parents=True)
    async with tls_front(str(cluster.url), tmp_path / "api-tls") as front:
        yield FakeNode(api_url=str(cluster.url), claims=claims, workdir=tmp_path / "node", api_host=front.host,
                       api_port=front.port, api_ca=front.ca_file)
