"""Keep the ValidatingWebhookConfiguration pointing at this operator's webhook server.

The configuration object itself is created by the deploy manifests (``deploy/quantjob.yaml``, the
Helm chart) with no webhooks; the operator only patches its ``webhooks`` (RBAC: ``get``/``patch``
on that one name). Kopf's own management would also need ``create`` on every webhook
configuration in the cluster, which could register a webhook that sees any object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from quantjob.api.resource import GROUP, PLURAL, VERSION
from quantjob.operator import kube
from quantjob.operator.admission import VALIDATE_ID, ServiceWebhookServer
from quantjob.operator.settings import Settings

log = logging.getLogger(__name__)
RETRY_S = 10.0


def configuration_ref(settings: Settings) -> kube.Ref:
    return kube.Ref("admissionregistration.k8s.io/v1", "validatingwebhookconfigurations", None,
                    settings.webhook.configuration)


def webhooks(client_config: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """The one webhook: QuantJob CREATE/UPDATE, in the watched namespaces only when namespaced."""
    client_config = dict(client_config)
    if "service" in client_config:  # kopf serves each handler under its id
        service = dict(client_config["service"])
        service["path"] = f"{(service.get('path') or '').rstrip('/')}/{VALIDATE_ID}"
        client_config["service"] = service
    hook: dict[str, Any] = {
        "name": f"{VALIDATE_ID}.{GROUP}",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": settings.webhook.failure_policy,
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 10,
        "rules": [{"apiGroups": [GROUP], "apiVersions": [VERSION], "resources": [PLURAL],
                   "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}],
        "clientConfig": client_config,
    }
    if settings.namespaces:
        hook["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(settings.namespaces)}]}
    return [hook]


async def keep_registered(server: ServiceWebhookServer, settings: Settings,
                          api: Callable[[], kubernetes.client.ApiClient]) -> None:
    """Patch the configuration whenever the server's client config (certificate) changes; runs forever."""
    ref = configuration_ref(settings)
    registered: dict[str, Any] | None = None
    while True:
        await server.configured.wait()
        config = server.client_config
        if config is None or config == registered:
            server.configured.clear()
            continue
        try:
            await asyncio.to_thread(kube.request, api(), "PATCH", ref.path(),
                                    {"webhooks": webhooks(config, settings)}, None, kube.MERGE_PATCH)
        except ApiException as error:
            hint = (" (create it: the chart and deploy/quantjob.yaml do)"
                    if error.status == 404 else "")
            log.error("cannot register the webhook in ValidatingWebhookConfiguration %s: HTTP %s%s; retrying",
                      settings.webhook.configuration, error.status, hint)
            await asyncio.sleep(RETRY_S)
            continue
        log.info("webhook registered in ValidatingWebhookConfiguration %s", settings.webhook.configuration)
        registered = config
        server.configured.clear()
