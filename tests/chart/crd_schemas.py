"""Strict schemas for the chart's objects whose kinds kubernetes-validate has no schema for.

cert-manager's ``Issuer``/``Certificate`` (cert-manager.io/v1) and the Prometheus Operator's
``ServiceMonitor`` (monitoring.coreos.com/v1) are CRDs. These schemas hold the fields the chart
uses, with the types and enums of those projects' CRDs, and refuse any other field, so a typo in a
template fails here as it would fail at ``kubectl apply`` against the real CRD.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _object(properties: Schema, required: tuple[str, ...] = ()) -> Schema:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = _object({"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRING_MAP,
                     "annotations": _STRING_MAP}, ("name", "namespace"))
_DURATION: Schema = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"}


def _kind(api_version: str, kind: str, spec: Schema) -> Schema:
    return _object({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _METADATA,
                    "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))


ISSUER = _kind("cert-manager.io/v1", "Issuer", _object({"selfSigned": _object({})}))

CERTIFICATE = _kind("cert-manager.io/v1", "Certificate", _object({
    "secretName": {"type": "string", "minLength": 1},
    "duration": _DURATION,
    "renewBefore": _DURATION,
    "dnsNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "usages": {"type": "array", "items": {"enum": ["signing", "digital signature", "key encipherment",
                                                   "server auth", "client auth"]}},
    "privateKey": _object({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                           "rotationPolicy": {"enum": ["Never", "Always"]}}),
    "issuerRef": _object({"name": {"type": "string", "minLength": 1}, "kind": {"type": "string"},
                          "group": {"type": "string"}}, ("name",)),
}, ("secretName", "issuerRef")))

SERVICE_MONITOR = _kind("monitoring.coreos.com/v1", "ServiceMonitor", _object({
    "namespaceSelector": _object({"any": {"type": "boolean"},
                                  "matchNames": {"type": "array", "items": {"type": "string"}}}),
    "selector": _object({"matchLabels": _STRING_MAP}),
    "endpoints": {"type": "array", "minItems": 1, "items": _object({
        "port": {"type": "string"}, "path": {"type": "string"},
        "interval": {"type": "string", "pattern": r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?"
                                                  r"([0-9]+ms)?)$"}})},
}, ("selector", "endpoints")))

BY_KIND: dict[tuple[str, str], Schema] = {
    ("cert-manager.io/v1", "Issuer"): ISSUER,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}
