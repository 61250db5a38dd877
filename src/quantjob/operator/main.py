"""Run the operator: kopf with our handlers, the periodic resync and the webhook registration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import kopf
import kubernetes

from quantjob.operator import admission, kube, registration
from quantjob.operator import metrics as operator_metrics
from quantjob.operator.handlers import build_registry, kopf_settings
from quantjob.operator.reconcile import Reconciler
from quantjob.operator.settings import Settings

LIVENESS_ENDPOINT = Settings().liveness_endpoint
LOG_FORMATS = {"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}
log = logging.getLogger(__name__)


def api_factory(settings: Settings) -> Callable[[], kubernetes.client.ApiClient]:
    """One client, made on first use (kopf has logged in by then)."""
    clients: dict[str, Any] = {}

    def api() -> kubernetes.client.ApiClient:
        if "api" not in clients:
            clients["api"] = kube.make_api_client(settings)
        return clients["api"]
    return api


async def resync(reconciler: Reconciler, settings: Settings, api: Callable[[], kubernetes.client.ApiClient],
                 interval: float, metrics: operator_metrics.OperatorMetrics | None = None) -> None:
    """Reconcile every QuantJob every ``interval`` seconds: what no event announces (a deleted child,
    a pod that became unschedulable, a deadline) is still acted on."""
    while True:
        await asyncio.sleep(interval)
        scopes: list[str | None] = list(settings.namespaces) or [None]
        for namespace in scopes:
            try:
                items = await asyncio.to_thread(kube.list_quantjobs, api(), namespace)
            except Exception as error:  # noqa: BLE001  # the loop must survive an unreachable API server
                log.warning("resync: cannot list QuantJobs in %s: %s", namespace or "all namespaces", error)
                continue
            for item in items:
                meta = item.get("metadata") or {}
                try:
                    await asyncio.to_thread(reconciler.reconcile, str(meta.get("namespace")), str(meta.get("name")))
                except Exception:  # one QuantJob's trouble must not stop the others
                    if metrics is not None:
                        metrics.count_error("resync")
                    log.exception("resync: reconciling %s/%s failed", meta.get("namespace"), meta.get("name"))


async def run_operator(settings: Settings, *, stop_flag: asyncio.Event | threading.Event | None = None,
                       liveness_endpoint: str | None = LIVENESS_ENDPOINT,
                       adjust: Callable[[kopf.OperatorSettings], None] | None = None) -> None:
    """Watch QuantJobs in ``settings.namespaces`` (or cluster-wide) until ``stop_flag`` is set.

    ``adjust`` may change kopf's settings before the start (tests disable namespace scanning).
    """
    api = api_factory(settings)
    reconciler = Reconciler(settings, api)
    server = admission.build_webhook_server(settings.webhook) if settings.webhook.enabled else None
    operator_settings = kopf_settings(settings, server)
    if adjust is not None:
        adjust(operator_settings)
    metrics = operator_metrics.OperatorMetrics() if settings.metrics_port else None
    registry = build_registry(settings, reconciler, metrics)
    if metrics is not None:
        operator_metrics.register(registry, metrics)
    tasks = [asyncio.create_task(resync(reconciler, settings, api, settings.resync_seconds, metrics))]
    if server is not None and settings.webhook.configuration:
        tasks.append(asyncio.create_task(registration.keep_registered(server, settings, api)))
    try:
        async with operator_metrics.serve(metrics, "0.0.0.0", settings.metrics_port):
            await kopf.operator(
                registry=registry,
                settings=operator_settings,
                standalone=True,  # one replica (Deployment strategy Recreate); no peering CRDs needed
                clusterwide=settings.cluster_wide,
                namespaces=settings.namespaces,
                stop_flag=stop_flag,
                liveness_endpoint=liveness_endpoint,
            )
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def main(settings: Settings, verbose: bool = False) -> int:
    kopf.configure(verbose=verbose, log_format=LOG_FORMATS[settings.log_format], log_refkey="quantjob")
    logging.getLogger(__name__).info("watching %s", ", ".join(settings.namespaces) or "all namespaces")
    asyncio.run(run_operator(settings, liveness_endpoint=settings.liveness_endpoint))
    return 0
