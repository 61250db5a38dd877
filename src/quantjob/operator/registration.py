"""Keep the ValidatingWebhookConfiguration pointing at this operator's webhook server.

The configuration object itself is created by the deploy manifests (``deploy/quantjob.yaml``, the
Helm chart) with no webhooks; the operator only patches its ``webhooks`` (RBAC: ``get``/``patch``
on that one name). Kopf's own management would also need ``create`` on every webhook
configuration in the cluster, which could register a webhook that sees any object.
"""

from __future__ import annotations

import asyncio
import contextlib
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


def _contains(current: Any, desired: Any) -> bool:
    """Whether ``current`` holds everything ``desired`` says (the API server adds defaults)."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(_contains(current.get(key), value) for key, value in desired.items())
    if isinstance(desired, list):
        return isinstance(current, list) and len(current) == len(desired) and \
            all(_contains(c, d) for c, d in zip(current, desired, strict=True))
    return bool(current == desired)


def registered(configuration: dict[str, Any] | None, desired: list[dict[str, Any]]) -> bool:
    """Whether the stored configuration carries exactly our webhooks as we want them."""
    return configuration is not None and _contains(configuration.get("webhooks") or [], desired)


async def keep_registered(server: ServiceWebhookServer, settings: Settings,
                          api: Callable[[], kubernetes.client.ApiClient], interval: float | None = None) -> None:
    """Level-triggered: at every certificate change and every ``interval`` (the resync period) read
    the configuration and patch it when it differs from what this server needs, so a replaced or
    edited ValidatingWebhookConfiguration is restored; runs forever."""
    ref = configuration_ref(settings)
    period = interval if interval is not None else settings.resync_seconds
    await server.configured.wait()
    while True:
        server.configured.clear()
        config = server.client_config
        if config is not None:
            await _reconcile_registration(ref, webhooks(config, settings), settings, api)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.configured.wait(), timeout=period)


async def _reconcile_registration(ref: kube.Ref, desired: list[dict[str, Any]], settings: Settings,
                                  api: Callable[[], kubernetes.client.ApiClient]) -> None:
    try:
        current = await asyncio.to_thread(kube.get, api(), ref)
        if registered(current, desired):
            return
        if current is None:
            log.error("cannot register the webhook: ValidatingWebhookConfiguration %s does not exist (create it: "
                      "the chart and deploy/quantjob.yaml do); retrying", settings.webhook.configuration)
            return
        await asyncio.to_thread(kube.request, api(), "PATCH", ref.path(), {"webhooks": desired}, None,
                                kube.MERGE_PATCH)
    except ApiException as error:
        log.error("cannot register the webhook in ValidatingWebhookConfiguration %s: HTTP %s; retrying",
                  settings.webhook.configuration, error.status)
        return
    log.info("webhook registered in ValidatingWebhookConfiguration %s", settings.webhook.configuration)
