"""The few API calls the handlers make, through the ``kubernetes`` client (blocking: call from threads)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from quantjob.api.resource import GROUP, PLURAL, VERSION
from quantjob.operator.builders import LABEL_NAME, Manifest
from quantjob.operator.settings import Settings

log = logging.getLogger(__name__)


def make_api_client(settings: Settings) -> kubernetes.client.ApiClient:
    """A client for ``settings.api_server`` if set, else the in-cluster account, else ``$KUBECONFIG``."""
    configuration = kubernetes.client.Configuration()
    if settings.api_server:
        configuration.host = settings.api_server
    else:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


def _creator(api: kubernetes.client.ApiClient, kind: str) -> Callable[..., Any]:
    core = kubernetes.client.CoreV1Api(api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    creators: dict[str, Callable[..., Any]] = {
        "ServiceAccount": core.create_namespaced_service_account,
        "ConfigMap": core.create_namespaced_config_map,
        "Service": core.create_namespaced_service,
        "Role": rbac.create_namespaced_role,
        "RoleBinding": rbac.create_namespaced_role_binding,
        "Job": kubernetes.client.BatchV1Api(api).create_namespaced_job,
    }
    if kind not in creators:
        raise ValueError(f"no creator for kind {kind!r}; the builders only produce {', '.join(creators)}")
    return creators[kind]


def create_if_absent(api: kubernetes.client.ApiClient, manifest: Manifest) -> bool:
    """Create ``manifest``; True if created, False if an object of that name was already there (409)."""
    meta = manifest["metadata"]
    try:
        _creator(api, manifest["kind"])(meta["namespace"], manifest, _preload_content=False)
    except ApiException as error:
        if error.status == 409:
            log.info("%s %s/%s already exists; keeping it", manifest["kind"], meta["namespace"], meta["name"])
            return False
        raise
    log.info("created %s %s/%s", manifest["kind"], meta["namespace"], meta["name"])
    return True


def patch_quantjob_status(api: kubernetes.client.ApiClient, namespace: str, name: str,
                          status: Mapping[str, Any]) -> None:
    """Merge-patch ``status`` of QuantJob ``namespace/name`` (keys not in ``status`` are kept)."""
    kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)}, _preload_content=False)


def list_worker_pods(api: kubernetes.client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    """Pods of QuantJob ``name`` (filtered here as well, for API servers that ignore label selectors)."""
    response: Any = kubernetes.client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"{LABEL_NAME}={name}", _preload_content=False)
    items = json.loads(response.data or b"{}").get("items") or []
    return [pod for pod in items if ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_NAME) == name]


def get_quantjob(api: kubernetes.client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """QuantJob ``namespace/name`` as a dict, or None when it no longer exists."""
    try:
        response: Any = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(json.loads(response.data))
