"""The validating webhook: the same check as the CLI and the create handler, served by kopf.

TLS, two ways (``QUANTJOB_WEBHOOK_TLS``):

- ``files``: ``tls.crt``/``tls.key`` (and ``ca.crt`` when present) from a mounted Secret, as
  cert-manager writes it; kopf re-reads them when they are renewed;
- ``self-signed``: the operator makes its own certificate at start (no cert-manager needed);
- ``insecure``: plain HTTP, for tests and local development only.

Either way the registration (kopf manages the ValidatingWebhookConfiguration when
``QUANTJOB_WEBHOOK_CONFIGURATION`` names it) points at the webhook Service with the ``caBundle``,
never at a URL the API server may not resolve.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf

from quantjob.api.problems import Problem
from quantjob.api.resource import GROUP, PLURAL, VERSION
from quantjob.operator.certificates import service_hostnames, write_self_signed
from quantjob.operator.review import review_quantjob, spec_changes
from quantjob.operator.settings import WebhookSettings

VALIDATE_ID = "validate-quantjob"


def admission_problems(operation: str, new: dict[str, Any], old: dict[str, Any] | None) -> list[Problem]:
    """Errors and warnings for a CREATE or UPDATE of a QuantJob."""
    problems = list(review_quantjob(new).problems)
    if operation == "UPDATE" and old is not None:
        problems.extend(spec_changes(old, new))
    return problems


def register(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.validate(GROUP, VERSION, PLURAL, id=VALIDATE_ID, operations=["CREATE", "UPDATE"],
                      registry=registry)
    def validate(body: kopf.Body, warnings: list[str], old: Any = None, operation: Any = "CREATE", **_: Any) -> None:
        problems = admission_problems(operation or "CREATE", dict(body),
                                      dict(old) if old is not None else None)
        warnings.extend(str(p) for p in problems if p.severity == "warning")
        errors = [str(p) for p in problems if p.severity == "error"]
        if errors:
            raise kopf.AdmissionError("; ".join(errors), code=422)


class ServiceWebhookServer(kopf.WebhookServer):
    """Kopf's webhook server, registered through a Service reference plus ``caBundle`` (not a URL)."""

    def __init__(self, *, service: str, namespace: str, service_port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.service_namespace = namespace
        self.service_port = service_port

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:  # kopf's WebhookFn -> WebhookClientConfig
        async for config in super().__call__(fn):
            client: dict[str, Any] = {"service": {"name": self.service, "namespace": self.service_namespace,
                                                  "port": self.service_port, "path": self.path or ""}}
            if config.get("caBundle"):
                client["caBundle"] = config["caBundle"]
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
