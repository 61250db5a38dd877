"""The API calls the reconciler makes, as plain REST through the ``kubernetes`` client's transport
(blocking: call from threads). One generic path for every kind, including PodGroups whose CRDs the
client library does not know.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

from quantjob.api.resource import GROUP, PLURAL, VERSION
from quantjob.operator.builders import LABEL_NAME, Manifest
from quantjob.operator.settings import Settings

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
TIMEOUT_S = (5.0, 30.0)  # connect, read: a stuck connection must not hold a reconcile forever

# (apiVersion, kind) -> plural, for everything the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("batch/v1", "Job"): "jobs",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("scheduling.volcano.sh/v1beta1", "PodGroup"): "podgroups",
    ("scheduling.x-k8s.io/v1alpha1", "PodGroup"): "podgroups",
    (f"{GROUP}/{VERSION}", "QuantJob"): PLURAL,
}


class ChildConflict(Exception):
    """An object with a child's name exists and this QuantJob does not own it."""


class CreateRejected(Exception):
    """The API server refused to create a child (HTTP 4xx other than 409); ``permanent`` when retrying
    the same object cannot help (400, 422: the object itself is invalid)."""

    def __init__(self, kind: str, name: str, status: int, message: str) -> None:
        super().__init__(f"creating {kind} {name} was refused (HTTP {status}): {message}")
        self.status = status
        self.message = message

    @property
    def permanent(self) -> bool:
        return self.status in (400, 422)


@dataclass(frozen=True)
class Ref:
    api_version: str
    plural: str
    namespace: str | None
    name: str | None = None

    def path(self, subresource: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        url = prefix + (f"/namespaces/{quote(self.namespace)}" if self.namespace else "") + f"/{self.plural}"
        if self.name:
            url += f"/{quote(self.name)}"
        return url + (f"/{subresource}" if subresource else "")


def ref_of(manifest: Mapping[str, Any]) -> Ref:
    key = (manifest["apiVersion"], manifest["kind"])
    if key not in PLURALS:
        raise ValueError(f"unknown kind {key}; add it to quantjob.operator.kube.PLURALS")
    meta = manifest["metadata"]
    return Ref(key[0], PLURALS[key], meta.get("namespace"), meta.get("name"))


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


def request(api: kubernetes.client.ApiClient, method: str, path: str, body: Any = None,
            query: list[tuple[str, str]] | None = None, content_type: str = "application/json") -> dict[str, Any]:
    """One API call; the decoded answer. Raises ``ApiException`` for any non-2xx status."""
    serialized = api.param_serialize(method, path, query_params=query or [],
                                     header_params={"Content-Type": content_type, "Accept": "application/json"},
                                     body=body, auth_settings=["BearerToken"])
    response = api.call_api(*serialized, _request_timeout=TIMEOUT_S)
    response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return dict(json.loads(response.data or b"{}"))


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason or error.body)
    except (ValueError, AttributeError):
        return str(error.body or error.reason)


def get(api: kubernetes.client.ApiClient, ref: Ref) -> dict[str, Any] | None:
    try:
        return request(api, "GET", ref.path())
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _check_owner(existing: Mapping[str, Any] | None, manifest: Manifest, owner_uid: str) -> None:
    if existing is not None and not owned_by(existing, owner_uid):
        raise ChildConflict(f"{manifest['kind']} {manifest['metadata']['name']} already exists and was not created "
                            "by this QuantJob; delete or rename it, or give the QuantJob another name")


def ensure(api: kubernetes.client.ApiClient, manifest: Manifest, owner_uid: str) -> bool:
    """Create ``manifest`` unless this QuantJob already owns an object of that name.

    Reads first and creates only what is missing: an API server judges a create by quota (403
    "exceeded quota") and by every admission webhook before it finds that the object exists
    (kubernetes/kubernetes#106842), so creating what exists would stall a QuantJob in a namespace
    at its object-count quota. True if created now. An existing object that this QuantJob does not
    own raises ``ChildConflict`` (it is never adopted); a refused create raises ``CreateRejected``.
    """
    ref = ref_of(manifest)
    existing = get(api, ref)
    if existing is not None:
        _check_owner(existing, manifest, owner_uid)
        return False
    try:
        request(api, "POST", Ref(ref.api_version, ref.plural, ref.namespace).path(), dict(manifest))
    except ApiException as error:
        if error.status == 409:  # created in between (another replica, a retried request)
            _check_owner(get(api, ref), manifest, owner_uid)
            return False
        if error.status == 404 and manifest["kind"] == "PodGroup":
            raise CreateRejected(manifest["kind"], str(ref.name), 404,
                                 f"the PodGroup API {manifest['apiVersion']} is not installed (no "
                                 "scheduler for this gang); install it or choose another gang scheduler") from None
        if 400 <= (error.status or 0) < 500:
            raise CreateRejected(manifest["kind"], str(ref.name), int(error.status or 0), _message(error)) from None
        raise
    log.info("created %s %s/%s", manifest["kind"], ref.namespace, ref.name)
    return True


def delete(api: kubernetes.client.ApiClient, ref: Ref) -> None:
    """Delete with background propagation (the Job's pods go with it); absent is fine."""
    try:
        request(api, "DELETE", ref.path(), {"kind": "DeleteOptions", "apiVersion": "v1",
                                            "propagationPolicy": "Background"})
    except ApiException as error:
        if error.status != 404:
            raise


def list_owned(api: kubernetes.client.ApiClient, api_version: str, plural: str, namespace: str,
               name: str) -> list[dict[str, Any]]:
    """Objects labelled for QuantJob ``name`` (filtered here too, for API servers without selectors)."""
    answer = request(api, "GET", Ref(api_version, plural, namespace).path(),
                     query=[("labelSelector", f"{LABEL_NAME}={name}")])
    return [item for item in answer.get("items") or []
            if ((item.get("metadata") or {}).get("labels") or {}).get(LABEL_NAME) == name]


def list_events(api: kubernetes.client.ApiClient, namespace: str, kind: str,
                name: str | None = None) -> list[dict[str, Any]]:
    """Core events about objects of ``kind`` (named ``name`` if given); field selector, filtered here too."""
    selector = f"involvedObject.kind={kind}" + (f",involvedObject.name={name}" if name else "")
    answer = request(api, "GET", Ref("v1", "events", namespace).path(), query=[("fieldSelector", selector)])
    return [item for item in answer.get("items") or []
            if (item.get("involvedObject") or {}).get("kind") == kind
            and (name is None or (item.get("involvedObject") or {}).get("name") == name)]


def get_quantjob(api: kubernetes.client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    return get(api, Ref(f"{GROUP}/{VERSION}", PLURAL, namespace, name))


def list_quantjobs(api: kubernetes.client.ApiClient, namespace: str | None) -> list[dict[str, Any]]:
    return list(request(api, "GET", Ref(f"{GROUP}/{VERSION}", PLURAL, namespace).path()).get("items") or [])


def patch_quantjob_status(api: kubernetes.client.ApiClient, namespace: str, name: str,
                          status: Mapping[str, Any]) -> None:
    """Merge-patch ``status`` of QuantJob ``namespace/name`` (keys not in ``status`` are kept)."""
    request(api, "PATCH", Ref(f"{GROUP}/{VERSION}", PLURAL, namespace, name).path("status"),
            {"status": dict(status)}, content_type=MERGE_PATCH)


def create_event(api: kubernetes.client.ApiClient, quantjob: Mapping[str, Any], type_: str, reason: str,
                 message: str, now: str) -> None:
    """A core Event on the QuantJob (``kubectl describe quantjob`` shows it); failures only logged."""
    meta = quantjob.get("metadata") or {}
    namespace = str(meta.get("namespace"))
    body = {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{time.time_ns():x}", "namespace": namespace},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "QuantJob", "name": meta.get("name"),
                               "namespace": namespace, "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message[:1024], "firstTimestamp": now, "lastTimestamp": now,
            "count": 1, "source": {"component": "quantjob-operator"},
            "reportingComponent": "quantjob-operator", "reportingInstance": "quantjob-operator"}
    try:
        request(api, "POST", Ref("v1", "events", namespace).path(), body)
    except ApiException as error:
        log.warning("could not record event %s on QuantJob %s/%s: HTTP %s", reason, namespace, meta.get("name"),
                    error.status)
