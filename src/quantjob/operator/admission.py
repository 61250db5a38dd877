"""The validating webhook: the same review as ``quantjob validate`` and the reconciler, served by kopf.

``evaluate(operation, new, old, settings)`` is the whole decision, callable in-process (the
fuzz test compares it with ``quantjob validate``); the kopf handler only turns its answer into an
AdmissionResponse.

TLS, two ways (``QUANTJOB_WEBHOOK_TLS``):

- ``files``: ``tls.crt``/``tls.key`` (and ``ca.crt`` when present) from a mounted Secret, as
  cert-manager writes it; kopf re-reads them when they are renewed;
- ``self-signed``: the operator makes its own certificate at start (no cert-manager needed);
- ``insecure``: plain HTTP, for tests and local development only.

The registration (``registration.keep_registered``) patches the ValidatingWebhookConfiguration
named by ``QUANTJOB_WEBHOOK_CONFIGURATION`` (created by the deploy manifests) with the Service
reference and the ``caBundle``: the operator needs ``get``/``patch`` on that one object only.

Failure policy: ``Ignore`` by default. The CRD's own schema and its CEL rule (the spec is
immutable) hold without the webhook, and the reconciler runs the same review (settings included)
before it creates anything, so a QuantJob written while the webhook is down ends Failed with the
same message instead of being blocked; ``Fail`` refuses every QuantJob write while the operator is
unreachable.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from quantjob.api.problems import Problem
from quantjob.api.resource import GROUP, PLURAL, VERSION
from quantjob.operator.certificates import service_hostnames, write_self_signed
from quantjob.operator.review import review_quantjob, spec_changes
from quantjob.operator.settings import Settings, WebhookSettings

VALIDATE_ID = "validate-quantjob"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return "; ".join(self.errors)


def admission_problems(operation: str, new: Mapping[str, Any], old: Mapping[str, Any] | None,
                       settings: Settings | None = None) -> list[Problem]:
    """Errors and warnings for a CREATE or UPDATE of a QuantJob.

    An UPDATE that leaves the spec as it was (labels, annotations, finalizers, status) or that
    touches an object being deleted is judged on immutability only: the spec was admitted when it
    was written, and an operator setting changed since (custom images turned off, say) must not
    keep users from labelling the object or removing a finalizer so that a delete can finish.
    """
    if operation == "UPDATE" and old is not None:
        deleting = bool((new.get("metadata") or {}).get("deletionTimestamp"))
        if deleting or (old.get("spec") or {}) == (new.get("spec") or {}):
            return spec_changes(old, new)
        return [*review_quantjob(new, settings).problems, *spec_changes(old, new)]
    return list(review_quantjob(new, settings).problems)


def evaluate(operation: str, new: Mapping[str, Any], old: Mapping[str, Any] | None = None,
             settings: Settings | None = None) -> Verdict:
    """The webhook's verdict on an AdmissionRequest's objects, without HTTP or kopf."""
    problems = admission_problems(operation or "CREATE", new, old, settings)
    errors = [str(p) for p in problems if p.severity == "error"]
    return Verdict(not errors, errors, [str(p) for p in problems if p.severity == "warning"])


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    @kopf.on.validate(GROUP, VERSION, PLURAL, id=VALIDATE_ID, operations=["CREATE", "UPDATE"],
                      ignore_failures=settings.webhook.failure_policy == "Ignore", registry=registry)
    def validate(body: kopf.Body, warnings: list[str], old: Any = None, operation: Any = "CREATE", **_: Any) -> None:
        verdict = evaluate(operation or "CREATE", dict(body), dict(old) if old is not None else None, settings)
        warnings.extend(verdict.warnings)
        if not verdict.allowed:
            raise kopf.AdmissionError(verdict.message, code=422)


class ServiceWebhookServer(kopf.WebhookServer):
    """Kopf's webhook server, advertised through a Service reference plus ``caBundle`` (not a URL).

    The latest client config is kept in ``client_config`` (and ``configured`` is set) for the
    registration task.
    """

    def __init__(self, *, service: str, namespace: str, service_port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.service_namespace = namespace
        self.service_port = service_port
        self.client_config: dict[str, Any] | None = None
        self.configured = asyncio.Event()

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:  # kopf's WebhookFn -> WebhookClientConfig
        async for config in super().__call__(fn):
            client: dict[str, Any] = {"service": {"name": self.service, "namespace": self.service_namespace,
                                                  "port": self.service_port, "path": self.path or ""}}
            if config.get("caBundle"):
                client["caBundle"] = config["caBundle"]
            self.client_config = client
            self.configured.set()
            yield client


def build_webhook_server(webhook: WebhookSettings, scratch: Path | None = None) -> ServiceWebhookServer:
    """The server for ``webhook.tls``; raises ``FileNotFoundError`` naming missing certificate files."""
    common: dict[str, Any] = {"service": webhook.service, "namespace": webhook.namespace,
                              "service_port": webhook.service_port, "addr": webhook.listen_addr,
                              "port": webhook.port}
    if webhook.tls == "insecure":
        return ServiceWebhookServer(insecure=True, **common)
    if webhook.tls == "self-signed":
        folder = scratch or Path(tempfile.mkdtemp(prefix="quantjob-webhook-"))
        files = write_self_signed(folder, service_hostnames(webhook.service, webhook.namespace))
        return ServiceWebhookServer(certfile=files.certfile, pkeyfile=files.keyfile, **common)
    folder = Path(webhook.cert_dir)
    cert, key, ca = folder / "tls.crt", folder / "tls.key", folder / "ca.crt"
    missing = [str(path) for path in (cert, key) if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"webhook TLS files missing: {', '.join(missing)}; mount the cert-manager Certificate's Secret at "
            f"{folder} (QUANTJOB_WEBHOOK_CERT_DIR), or set QUANTJOB_WEBHOOK_TLS=self-signed")
    return ServiceWebhookServer(certfile=cert, pkeyfile=key, cafile=ca if ca.is_file() else None, **common)
