"""Kopf wiring: every event that may change what a QuantJob should do calls the reconciler.

``build_registry(settings, reconciler)`` returns a fresh ``kopf.OperatorRegistry`` (no module-level
state). Only ``on.event`` handlers are used: they observe without writing anything onto the objects
(no progress annotations, no finalizers), so the operator needs no ``patch`` on QuantJobs, and a
QuantJob can be deleted while the operator is down.
Handlers are sync functions: kopf runs them in its thread pool, where the blocking client belongs.
The periodic resync (``main.resync``) covers what no event announces (a deleted Service, a pod that
became unschedulable, the startup deadline).
"""

from __future__ import annotations

from typing import Any

import kopf

from quantjob.api.resource import GROUP, KIND, PLURAL, VERSION
from quantjob.operator import admission
from quantjob.operator.builders import LABEL_COMPONENT, LABEL_NAME
from quantjob.operator.metrics import OperatorMetrics, counted
from quantjob.operator.reconcile import Reconciler
from quantjob.operator.settings import Settings


def kopf_settings(settings: Settings, webhook_server: Any = None) -> kopf.OperatorSettings:
    """Kopf's own settings: our webhook server, registered by us (``registration``), not by kopf."""
    result = kopf.OperatorSettings()
    result.persistence.finalizer = f"{GROUP}/finalizer"
    # Server-side label selectors: the API server sends only our children's events (the handlers'
    # ``labels=`` filters alone would still list and watch every Job and ConfigMap of the cluster).
    result.watching.label_selectors["batch", "v1", "jobs"] = LABEL_NAME
    result.watching.label_selectors["v1", "configmaps"] = f"{LABEL_COMPONENT}=progress"
    if webhook_server is not None:
        result.admission.server = webhook_server
        result.admission.managed = None  # kopf would need create on every webhook configuration
    return result


def owner_name(body: kopf.Body) -> str | None:
    """The QuantJob that controls this child, or None for objects that merely carry our label."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref.get("name"))
    return None


def build_registry(settings: Settings, reconciler: Reconciler,
                   metrics: OperatorMetrics | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if settings.api_server:
            return kopf.ConnectionInfo(server=settings.api_server)
        return kopf.login_via_client(**kwargs)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="quantjob", registry=registry)
    @counted(metrics, "quantjob")
    def quantjob_event(event: Any, namespace: str | None, name: str, **_: Any) -> None:
        if namespace is None or event.get("type") == "DELETED":
            return
        reconciler.reconcile(namespace, name)

    @counted(metrics, "child")
    def child_event(event: Any, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        owner = owner_name(body)
        if owner is not None and namespace is not None:
            reconciler.reconcile(namespace, owner)

    kopf.on.event("batch", "v1", "jobs", labels={LABEL_NAME: kopf.PRESENT}, id="child-job",
                  registry=registry)(child_event)
    if settings.progress_reporting:
        kopf.on.event("v1", "configmaps", labels={LABEL_COMPONENT: "progress"}, id="progress",
                      registry=registry)(child_event)
    if settings.webhook.enabled:  # kopf refuses validate handlers without a webhook server
        admission.register(registry, settings)
    return registry
