"""Run the operator: kopf with our registry and settings (``quantjob operator``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import kopf

from quantjob.operator import metrics as operator_metrics
from quantjob.operator.handlers import build_registry, kopf_settings
from quantjob.operator.settings import Settings

LIVENESS_ENDPOINT = Settings().liveness_endpoint
LOG_FORMATS = {"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}


async def run_operator(settings: Settings, *, stop_flag: asyncio.Event | None = None,
                       liveness_endpoint: str | None = LIVENESS_ENDPOINT,
                       adjust: Callable[[kopf.OperatorSettings], None] | None = None) -> None:
    """Watch QuantJobs in ``settings.namespaces`` (or cluster-wide) until ``stop_flag`` is set.

    ``adjust`` may change kopf's settings before the start (tests disable namespace scanning).
    """
    operator_settings = kopf_settings(settings)
    if adjust is not None:
        adjust(operator_settings)
    metrics = operator_metrics.OperatorMetrics() if settings.metrics_port else None
    registry = build_registry(settings, metrics=metrics)
    if metrics is not None:
        operator_metrics.register(registry, metrics)
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


def main(settings: Settings, verbose: bool = False) -> int:
    kopf.configure(verbose=verbose, log_format=LOG_FORMATS[settings.log_format], log_refkey="quantjob")
    logging.getLogger(__name__).info("watching %s", ", ".join(settings.namespaces) or "all namespaces")
    asyncio.run(run_operator(settings, liveness_endpoint=settings.liveness_endpoint))
    return 0
