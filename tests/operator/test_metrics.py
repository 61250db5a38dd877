"""The operator's /metrics: QuantJobs by phase from the watch stream, handler errors, the port settings."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from emulator import NAMESPACE, eventually, free_port, quantjob_manifest, stored
from test_handlers_kmock import JOBS, create_quantjob, patch_status

from quantjob.operator.metrics import OperatorMetrics
from quantjob.operator.settings import SettingsError, load_settings


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, from the text exposition format."""
    result: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            result[key] = float(value)
    return result


def test_phases_and_errors_render_as_prometheus_text() -> None:
    metrics = OperatorMetrics()
    metrics.observe("ml", "a", "Running")
    metrics.observe("ml", "b", "Running")
    metrics.observe("ml", "c", None)
    metrics.observe("ml", "b", "Succeeded")
    metrics.observe("ops", "d", "Failed")
    metrics.forget("ops", "d")
    text = metrics.render()
    assert "# TYPE quantjob_quantjobs gauge" in text and "# TYPE quantjob_reconcile_errors_total counter" in text
    assert samples(text) == {
        'quantjob_quantjobs{phase="Pending"}': 0, 'quantjob_quantjobs{phase="Running"}': 1,
        'quantjob_quantjobs{phase="Succeeded"}': 1, 'quantjob_quantjobs{phase="Failed"}': 0,
        'quantjob_quantjobs{phase="Unknown"}': 1}


def test_counted_handlers_count_each_exception_and_reraise_it() -> None:
    metrics = OperatorMetrics()

    @metrics.counted("reconcile")
    def handler(fail: bool) -> str:
        if fail:
            raise RuntimeError("API server said 500")
        return "done"

    assert handler(fail=False) == "done"
    for _ in range(2):
        with pytest.raises(RuntimeError, match="500"):
            handler(fail=True)
    assert samples(metrics.render())['quantjob_reconcile_errors_total{handler="reconcile"}'] == 2


def test_port_settings() -> None:
    settings = load_settings({"QUANTJOB_METRICS_PORT": "8081", "QUANTJOB_HEALTH_PORT": "0"})
    assert settings.metrics_port == 8081 and settings.liveness_endpoint is None
    assert load_settings({}).liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert load_settings({}).metrics_port == 0
    with pytest.raises(SettingsError, match="QUANTJOB_HEALTH_PORT and QUANTJOB_METRICS_PORT are both 8080"):
        load_settings({"QUANTJOB_METRICS_PORT": "8080"})
    with pytest.raises(SettingsError, match="QUANTJOB_METRICS_PORT"):
        load_settings({"QUANTJOB_METRICS_PORT": "metrics"})


async def scrape(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        return samples(await response.text())


async def eventually_scraped(port: int, key: str, wanted: float, timeout: float = 15.0,
                             at_least: bool = False) -> dict[str, float]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            found = await scrape(port)
        except aiohttp.ClientConnectionError:
            found = {}
        value = found.get(key)
        if value == wanted or (at_least and value is not None and value >= wanted):
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{key} never became {wanted}; last scrape {found}")
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_operator_serves_phases_as_quantjobs_move(cluster: Any, start_operator: Any) -> None:
    port = free_port()
    job = "qwen2-w8a8-a1"
    async with start_operator(metrics_port=port):
        await create_quantjob(cluster, quantjob_manifest(count=2))
        await eventually(lambda: stored(cluster, JOBS, job))
        await eventually_scraped(port, 'quantjob_quantjobs{phase="Pending"}', 1)
        await patch_status(cluster, JOBS, job, {"active": 2, "ready": 2, "startTime": "2099-01-01T00:00:00Z"})
        await eventually_scraped(port, 'quantjob_quantjobs{phase="Running"}', 1)
        await patch_status(cluster, JOBS, job, {
            "active": 0, "ready": 0, "succeeded": 2, "completionTime": "2099-01-01T01:00:00Z",
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]})
        found = await eventually_scraped(port, 'quantjob_quantjobs{phase="Succeeded"}', 1)
    assert found['quantjob_quantjobs{phase="Pending"}'] == found['quantjob_quantjobs{phase="Running"}'] == 0
    assert not any(key.startswith("quantjob_reconcile_errors_total") for key in found)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_operator_counts_reconcile_errors(cluster: Any, start_operator: Any) -> None:
    cluster[f"post /api/v1/namespaces/{NAMESPACE}/configmaps"] << 500
    port = free_port()
    async with start_operator(metrics_port=port):
        await create_quantjob(cluster, quantjob_manifest(count=2))
        # the reconcile of the QuantJob's event raises (and is retried on the next event or resync)
        await eventually_scraped(port, 'quantjob_reconcile_errors_total{handler="quantjob"}', 1, at_least=True)
