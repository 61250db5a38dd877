"""The operator's Prometheus metrics: QuantJobs by phase and handler errors, served as text.

- ``quantjob_quantjobs{phase}`` (gauge): the QuantJobs the operator watches, by ``status.phase``
  (``Unknown`` until the operator has written one). Kept from the watch stream: a kopf event handler
  on QuantJobs records each object's phase and forgets deleted ones, so the numbers follow the
  cluster without listing it.
- ``quantjob_reconcile_errors_total{handler}`` (counter): reconciles that raised (an API call
  refused, a timeout): ``quantjob`` and ``child`` for those run by a watch event, ``resync`` for
  the periodic ones; the next event or resync tries again. A QuantJob that fails the review is not
  an error of the operator and is not counted.

Served at ``http://<pod>:<QUANTJOB_METRICS_PORT>/metrics`` in the text exposition format, by an
aiohttp server in the operator's event loop (kopf already runs on aiohttp).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import kopf

from quantjob.api.resource import GROUP, PLURAL, VERSION

PHASES = ("Pending", "Running", "Succeeded", "Failed")
UNKNOWN_PHASE = "Unknown"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Handler = TypeVar("Handler", bound=Callable[..., Any])


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class OperatorMetrics:
    """What ``/metrics`` reports. Thread-safe: kopf runs sync handlers in its thread pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        self._errors: dict[str, int] = {}

    def observe(self, namespace: str, name: str, phase: str | None) -> None:
        """Record the phase of QuantJob ``namespace/name`` (None or empty: not written yet)."""
        with self._lock:
            self._phases[(namespace, name)] = phase or UNKNOWN_PHASE

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def count_error(self, handler: str) -> None:
        with self._lock:
            self._errors[handler] = self._errors.get(handler, 0) + 1

    def phase_counts(self) -> dict[str, int]:
        """Every phase (the four the operator writes, then any other seen) with its count."""
        with self._lock:
            phases = list(self._phases.values())
        counts = {phase: 0 for phase in (*PHASES, UNKNOWN_PHASE)}
        for phase in phases:
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        lines = ["# HELP quantjob_quantjobs QuantJobs watched by this operator, by status.phase.",
                 "# TYPE quantjob_quantjobs gauge"]
        lines += [f'quantjob_quantjobs{{phase="{_label(phase)}"}} {count}'
                  for phase, count in self.phase_counts().items()]
        lines += ["# HELP quantjob_reconcile_errors_total Reconciles that raised, by what ran them (each is retried).",
                  "# TYPE quantjob_reconcile_errors_total counter"]
        lines += [f'quantjob_reconcile_errors_total{{handler="{_label(handler)}"}} {count}'
                  for handler, count in sorted(self.errors().items())]
        return "\n".join(lines) + "\n"

    def counted(self, handler: str) -> Callable[[Handler], Handler]:
        """Decorator for a sync handler: count each exception it raises, then re-raise it."""
        def decorate(fn: Handler) -> Handler:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return fn(*args, **kwargs)
                except Exception:
                    self.count_error(handler)
                    raise
            return wrapper  # type: ignore[return-value]
        return decorate


def register(registry: kopf.OperatorRegistry, metrics: OperatorMetrics) -> None:
    """Keep ``metrics`` up to date with every QuantJob event (its own handler: it writes nothing)."""

    @kopf.on.event(GROUP, VERSION, PLURAL, id="metrics", registry=registry)
    def track_phase(event: Any, body: kopf.Body, namespace: str | None, name: str | None, **_: Any) -> None:
        if namespace is None or name is None:
            return
        if event.get("type") == "DELETED":
            metrics.forget(namespace, name)
        else:
            metrics.observe(namespace, name, (body.get("status") or {}).get("phase"))


def counted(metrics: OperatorMetrics | None, handler: str) -> Callable[[Handler], Handler]:
    """``metrics.counted(handler)``, or no wrapping at all without metrics."""
    if metrics is None:
        return lambda fn: fn
    return metrics.counted(handler)


@asynccontextmanager
async def serve(metrics: OperatorMetrics | None, addr: str, port: int) -> AsyncIterator[None]:
    """Serve ``GET /metrics`` on ``addr:port`` while the block runs; nothing without metrics."""
    if metrics is None:
        yield
        return
    from aiohttp import web

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, addr, port).start()
        yield
    finally:
        await runner.cleanup()
