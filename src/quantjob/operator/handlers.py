"""Kopf handlers: reconcile a new QuantJob into its children, mirror its Job's status back.

``build_registry(settings)`` returns a fresh ``kopf.OperatorRegistry`` (no module-level state), so
tests and ``quantjob operator`` run the same handlers with different settings. Handlers are sync
functions: kopf runs them in its thread pool, where the blocking ``kubernetes`` client belongs.
"""

from __future__ import annotations

from typing import Any

import kopf

from quantjob.api.resource import GROUP, KIND, PLURAL, VERSION
from quantjob.operator import admission, kube
from quantjob.operator.builders import LABEL_NAME, ChildNames, build_children
from quantjob.operator.metrics import OperatorMetrics, counted
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import Settings
from quantjob.operator.status import (
    accepted_status,
    changed,
    invalid_status,
    mirror_job,
    now_iso,
    pod_failure_message,
)

ANNOTATION_PREFIX = "kopf.quantjob.io"


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    """Kopf's own settings for our operator: progress in annotations (status stays ours), webhook."""
    result = kopf.OperatorSettings()
    result.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    result.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    result.persistence.finalizer = f"{GROUP}/finalizer"
    if settings.webhook.enabled:
        result.admission.server = admission.build_webhook_server(settings.webhook)
        result.admission.managed = settings.webhook.configuration or None
    return result


def _owner_name(body: kopf.Body) -> str | None:
    """The QuantJob that owns this Job, or None for Jobs that merely carry our label."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref.get("name"))
    return None


def build_registry(settings: Settings, metrics: OperatorMetrics | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    clients: dict[str, Any] = {}

    def api() -> Any:
        if "api" not in clients:
            clients["api"] = kube.make_api_client(settings)
        return clients["api"]

    def _fresh_status(namespace: str, name: str, body: kopf.Body) -> dict[str, Any]:
        current = kube.get_quantjob(api(), namespace, name)
        return dict((current if current is not None else body).get("status") or {})

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if settings.api_server:
            return kopf.ConnectionInfo(server=settings.api_server)
        return kopf.login_via_client(**kwargs)

    @kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @counted(metrics, "reconcile")
    def reconcile(body: kopf.Body, namespace: str | None, name: str, logger: kopf.Logger, **_: Any) -> None:
        if namespace is None:
            raise kopf.PermanentError("QuantJob is a namespaced resource; got one without a namespace")
        resolution = review_quantjob(body)
        if not resolution.ok or resolution.job is None:
            previous = _fresh_status(namespace, name, body)
            status = invalid_status(resolution.problems, previous, now_iso())
            if changed(status, previous):
                kube.patch_quantjob_status(api(), namespace, name, status)
            logger.error("QuantJob rejected, nothing created: %s", status["conditions"][-1]["message"])
            return
        children = build_children(resolution.job, resolution, settings, namespace)
        kopf.adopt(children, owner=body)
        *setup, job = children
        for child in setup:
            kube.create_if_absent(api(), child)
        # Status before the Job, so the Job's first events find runner and conditions in place. Read
        # fresh: a re-run (operator restart, a stale watch event) must not roll back mirrored conditions.
        previous = _fresh_status(namespace, name, body)
        status = accepted_status(resolution, ChildNames(name).job, previous, now_iso())
        if changed(status, previous):
            kube.patch_quantjob_status(api(), namespace, name, status)
        kube.create_if_absent(api(), job)
        for warning in (p for p in resolution.problems if p.severity == "warning"):
            logger.warning("%s", warning)

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_NAME: kopf.PRESENT}, id="mirror-job", registry=registry)
    @counted(metrics, "mirror-job")
    def mirror(event: Any, body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
        owner = _owner_name(body)
        if owner is None or namespace is None or event.get("type") == "DELETED":
            return
        quantjob = kube.get_quantjob(api(), namespace, owner)
        if quantjob is None:
            return  # the owner is gone; garbage collection takes the Job
        previous = quantjob.get("status") or {}
        job_status = dict(body.get("status") or {})
        world_size = int(body.spec.get("completions") or previous.get("worldSize") or 1)
        failed = any(c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True"
                     for c in job_status.get("conditions") or [])
        pod_message = pod_failure_message(kube.list_worker_pods(api(), namespace, owner)) if failed else None
        update = mirror_job(job_status, world_size, previous, pod_message, now_iso())
        if changed(update, previous):
            kube.patch_quantjob_status(api(), namespace, owner, update)
            logger.info("QuantJob %s is %s", owner, update["phase"])

    if settings.webhook.enabled:  # kopf refuses validate handlers without a webhook server
        admission.register(registry)
    return registry
