"""Rank 0's progress reporter, over HTTP against kmock (the worker side of the status contract)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import kmock
import pytest
from emulator import NAMESPACE, QUANTJOBS, quantjob_manifest, stored

from quantjob.worker.progress_k8s import KubernetesProgress, progress_from_environment

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def seed_quantjob(cluster: kmock.KubernetesEmulator) -> None:
    body = quantjob_manifest()
    body["status"] = {"phase": "Running", "runner": "dp_layer_wise"}
    cluster.objects[kmock.resource(QUANTJOBS), NAMESPACE, "qwen2-w8a8"] = body


def progress_patches(cluster: kmock.KubernetesEmulator) -> list[dict[str, Any]]:
    return [r.data["status"]["progress"] for r in cluster if r.method == "PATCH" and r.subresource == "status"]


async def test_reports_layers_rate_limited_and_keeps_operator_fields(cluster: kmock.KubernetesEmulator) -> None:
    seed_quantjob(cluster)
    clock = Clock()
    reporter = KubernetesProgress("qwen2-w8a8", NAMESPACE, str(cluster.url), clock=clock)
    await asyncio.to_thread(reporter.start, 4)
    clock.now += 2.5
    await asyncio.to_thread(reporter.layer_done, 1, 4, 0.01)
    clock.now += 0.5
    await asyncio.to_thread(reporter.layer_done, 2, 4, 0.02)  # within 2 s: held back
    assert len(progress_patches(cluster)) == 2
    clock.now += 0.5
    await asyncio.to_thread(reporter.layer_done, 3, 4, 0.03)  # still held back
    await asyncio.to_thread(reporter.layer_done, 4, 4, 0.04)  # the last layer is always sent
    await asyncio.to_thread(reporter.finish, True)

    patches = progress_patches(cluster)
    assert [p["layersDone"] for p in patches] == [0, 1, 4]
    status = stored(cluster, QUANTJOBS, "qwen2-w8a8")["status"]  # type: ignore[index]
    assert status["progress"]["layersDone"] == 4 and status["progress"]["layersTotal"] == 4
    assert status["progress"]["summary"] == "4/4" and status["progress"]["lastLayerError"] == 0.04
    assert status["phase"] == "Running" and status["runner"] == "dp_layer_wise"  # the operator's fields stay


async def test_finish_flushes_a_held_back_update(cluster: kmock.KubernetesEmulator) -> None:
    seed_quantjob(cluster)
    clock = Clock()
    reporter = KubernetesProgress("qwen2-w8a8", NAMESPACE, str(cluster.url), clock=clock)
    await asyncio.to_thread(reporter.start, 8)
    await asyncio.to_thread(reporter.layer_done, 3, 8, None)  # held back (same instant)
    await asyncio.to_thread(reporter.finish, False, "rank 1 died")
    assert progress_patches(cluster)[-1]["layersDone"] == 3


async def test_unreachable_or_refusing_server_never_raises(cluster: kmock.KubernetesEmulator,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    missing = KubernetesProgress("absent", NAMESPACE, str(cluster.url))  # 404: no such QuantJob
    await asyncio.to_thread(missing.start, 2)
    closed = KubernetesProgress("qwen2-w8a8", NAMESPACE, "http://127.0.0.1:9", timeout=1)
    await asyncio.to_thread(closed.start, 2)
    await asyncio.to_thread(closed.layer_done, 2, 2, 0.1)
    assert missing.failures == 1 and closed.failures == 2
    assert "HTTP 404" in caplog.text and "quantization continues" in caplog.text


async def test_sends_the_service_account_token(cluster: kmock.KubernetesEmulator, tmp_path: Path) -> None:
    seed_quantjob(cluster)
    (tmp_path / "token").write_text("secret-token\n")
    (tmp_path / "namespace").write_text(NAMESPACE)
    reporter = progress_from_environment({"QUANTJOB_NAME": "qwen2-w8a8", "QUANTJOB_API_SERVER": str(cluster.url)},
                                         account_dir=tmp_path)
    assert reporter is not None
    await asyncio.to_thread(reporter.start, 2)
    (request,) = [r for r in cluster if r.method == "PATCH"]
    assert request.headers["Authorization"] == "Bearer secret-token"
    assert request.headers["Content-Type"] == "application/merge-patch+json"


async def test_environment_selection(tmp_path: Path) -> None:
    assert progress_from_environment({}, account_dir=tmp_path) is None  # not in a QuantJob pod
    (tmp_path / "namespace").write_text("ml")
    (tmp_path / "token").write_text("t")
    reporter = progress_from_environment({"QUANTJOB_NAME": "q", "KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                          "KUBERNETES_SERVICE_PORT": "6443"}, account_dir=tmp_path)
    assert reporter is not None
    assert reporter.url == "https://10.0.0.1:6443/apis/quantjob.io/v1alpha1/namespaces/ml/quantjobs/q/status"
    assert progress_from_environment({"QUANTJOB_NAME": "q"}, account_dir=tmp_path / "none") is None
