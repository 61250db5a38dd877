"""Rank 0's progress reporter against kmock behind HTTPS (the worker side of the progress contract).

The worker writes one ConfigMap of its QuantJob (never the QuantJob), over TLS to the in-cluster API
server only; the operator mirrors it (tests/operator/test_handlers_kmock.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import kmock
import pytest
from emulator import NAMESPACE, TlsFront, stored, tls_front

from quantjob.worker.progress_k8s import KubernetesProgress, progress_from_environment

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

CONFIG_MAP = "qwen2-w8a8-progress"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def seed(cluster: kmock.KubernetesEmulator) -> None:
    cluster.objects[kmock.resource("v1/configmaps"), NAMESPACE, CONFIG_MAP] = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
        "data": {"progress.json": "{}"}}


def account(folder: Path, front: TlsFront) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "token").write_text("secret-token\n")
    (folder / "namespace").write_text(NAMESPACE)
    (folder / "ca.crt").write_bytes(front.ca_file.read_bytes())
    return folder


def environment(front: TlsFront, **extra: str) -> dict[str, str]:
    return {"QUANTJOB_PROGRESS_CONFIGMAP": CONFIG_MAP, "QUANTJOB_NAMESPACE": NAMESPACE, "QUANTJOB_ATTEMPT": "2",
            "KUBERNETES_SERVICE_HOST": front.host, "KUBERNETES_SERVICE_PORT": str(front.port), **extra}


def sent(cluster: kmock.KubernetesEmulator) -> list[dict[str, Any]]:
    return [json.loads(r.data["data"]["progress.json"]) for r in cluster
            if r.method == "PATCH" and r.resource == kmock.resource("v1/configmaps")]


def reporter_for(cluster: kmock.KubernetesEmulator, front: TlsFront, tmp_path: Path,
                 clock: Clock | None = None) -> KubernetesProgress:
    folder = account(tmp_path / "account", front)
    return KubernetesProgress(CONFIG_MAP, NAMESPACE, f"https://{front.host}:{front.port}", token_file=folder / "token",
                              ca_file=folder / "ca.crt", attempt=2, clock=clock or Clock())


async def test_reports_layers_rate_limited_with_attempt_and_resume_point(cluster: kmock.KubernetesEmulator,
                                                                        tmp_path: Path) -> None:
    seed(cluster)
    clock = Clock()
    async with tls_front(str(cluster.url), tmp_path / "tls") as front:
        reporter = reporter_for(cluster, front, tmp_path, clock)
        await asyncio.to_thread(reporter.start, 4, 1)
        clock.now += 2.5
        await asyncio.to_thread(reporter.layer_done, 1, 4, 0.01)
        clock.now += 0.5
        await asyncio.to_thread(reporter.layer_done, 2, 4, 0.02)  # within 2 s: held back
        assert len(sent(cluster)) == 2
        clock.now += 0.5
        await asyncio.to_thread(reporter.layer_done, 3, 4, 0.03)  # still held back
        await asyncio.to_thread(reporter.layer_done, 4, 4, 0.04)  # the last layer is always sent
        await asyncio.to_thread(reporter.finish, True)
    records = sent(cluster)
    assert [r["layersDone"] for r in records] == [0, 1, 4]
    # secondsPerLayer: this attempt's pace, the resumed layer excluded (3.5 s for layers 2-4)
    assert records[-1] == {"attempt": 2, "layersDone": 4, "layersTotal": 4, "currentLayer": None,
                           "lastLayerError": 0.04, "resumedFrom": 1, "secondsPerLayer": 1.167}
    stored_map = stored(cluster, "v1/configmaps", CONFIG_MAP)
    assert stored_map is not None and json.loads(stored_map["data"]["progress.json"])["layersDone"] == 4
    assert set(front.tokens) == {"Bearer secret-token"}  # the token went over TLS only


async def test_finish_flushes_a_held_back_update(cluster: kmock.KubernetesEmulator, tmp_path: Path) -> None:
    seed(cluster)
    async with tls_front(str(cluster.url), tmp_path / "tls") as front:
        reporter = reporter_for(cluster, front, tmp_path)
        await asyncio.to_thread(reporter.start, 8)
        await asyncio.to_thread(reporter.layer_done, 3, 8, None)  # held back (same instant)
        await asyncio.to_thread(reporter.finish, False, "rank 1 died")
    assert sent(cluster)[-1]["layersDone"] == 3


async def test_unreachable_or_refusing_server_never_raises(cluster: kmock.KubernetesEmulator, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with tls_front(str(cluster.url), tmp_path / "tls") as front:
        missing = reporter_for(cluster, front, tmp_path)  # 404: no such ConfigMap
        await asyncio.to_thread(missing.start, 2)
        folder = tmp_path / "account"
        closed = KubernetesProgress(CONFIG_MAP, NAMESPACE, "https://127.0.0.1:9", token_file=folder / "token",
                                    ca_file=folder / "ca.crt", timeout=1)
        await asyncio.to_thread(closed.start, 2)
        await asyncio.to_thread(closed.layer_done, 2, 2, 0.1)
    assert missing.failures == 1 and closed.failures == 2
    assert "HTTP 404" in caplog.text and "quantization continues" in caplog.text


async def test_in_cluster_configuration_only(cluster: kmock.KubernetesEmulator, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14.4: QUANTJOB_API_SERVER (or any URL from the pod's env) never receives the token."""
    seed(cluster)
    async with tls_front(str(cluster.url), tmp_path / "tls") as front:
        folder = account(tmp_path / "account", front)
        reporter = progress_from_environment(environment(front, QUANTJOB_API_SERVER="http://evil.example:8080",
                                                         QUANTJOB_SERVICE_ACCOUNT_DIR=str(folder)))
        assert reporter is not None
        assert reporter.url == (f"https://{front.host}:{front.port}/api/v1/namespaces/{NAMESPACE}/configmaps/"
                                f"{CONFIG_MAP}")
        await asyncio.to_thread(reporter.start, 2)
    assert front.tokens == ["Bearer secret-token"] and sent(cluster)[0]["attempt"] == 2

    caplog.set_level(logging.WARNING)
    without_ca = tmp_path / "no-ca"
    without_ca.mkdir()
    (without_ca / "token").write_text("t")
    assert progress_from_environment(environment(front), account_dir=without_ca) is None
    assert "the cluster CA" in caplog.text  # no token over an unverified connection
    assert progress_from_environment({"QUANTJOB_PROGRESS_CONFIGMAP": CONFIG_MAP, "QUANTJOB_NAMESPACE": NAMESPACE,
                                      "QUANTJOB_API_SERVER": "https://evil.example"}, account_dir=folder) is None
    assert progress_from_environment({}, account_dir=folder) is None  # not in a QuantJob pod
    with pytest.raises(ValueError, match="https only"):
        KubernetesProgress(CONFIG_MAP, NAMESPACE, "http://127.0.0.1:1", token_file=folder / "token",
                           ca_file=folder / "ca.crt")
