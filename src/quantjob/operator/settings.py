"""Operator settings: pydantic models filled from ``QUANTJOB_*`` environment variables, then flags.

Environment (every variable optional):

=================================  =================================================================
``QUANTJOB_NAMESPACES``            comma-separated namespaces to watch; empty = the whole cluster
``QUANTJOB_WORKER_IMAGE``          worker image for QuantJobs without ``spec.image``
``QUANTJOB_NPU_RESOURCE_NAME``     default extended resource for ``devices.type: npu``
``QUANTJOB_CUDA_RESOURCE_NAME``    default extended resource for ``devices.type: cuda``
``QUANTJOB_NPU_RUNTIME_CLASS``     ``runtimeClassName`` of npu pods; empty (default) = none. Checked to exist
                                   before a Job is created
``QUANTJOB_MASTER_PORT``           rendezvous port of rank 0
``QUANTJOB_GANG_SCHEDULING``       default gang scheduler: ``none``, ``volcano`` or ``coscheduling``
``QUANTJOB_VOLCANO_SCHEDULER``     ``schedulerName`` for Volcano gangs (``volcano``)
``QUANTJOB_COSCHEDULING_SCHEDULER`` ``schedulerName`` of the coscheduling plugin (``scheduler-plugins-scheduler``)
``QUANTJOB_POD_DEFAULTS``          YAML/JSON pod overlay for every worker pod (schedulerName, nodeSelector,
                                   tolerations, affinity, labels, annotations, supplementalGroups, volumes
                                   incl. host paths, volumeMounts, env); a QuantJob's ``spec.pod`` wins
``QUANTJOB_RESYNC_SECONDS``        how often every QuantJob is reconciled even without events
``QUANTJOB_PROGRESS_REPORTING``    ``true``/``false``: rank 0 reports progress (mounts a short-lived token)
``QUANTJOB_NETWORK_POLICY``        ``true``/``false``: a NetworkPolicy per QuantJob lets only its own pods in
``QUANTJOB_ALLOW_TRUST_REMOTE_CODE`` ``false`` refuses QuantJobs with ``model.trustRemoteCode``
``QUANTJOB_ALLOW_CUSTOM_IMAGE``    ``false`` refuses QuantJobs with ``spec.image``
``QUANTJOB_ENV_ALLOW``             comma-separated globs ``spec.env`` keys must match; empty = any
``QUANTJOB_ENV_DENY``              comma-separated globs ``spec.env`` keys must not match (e.g. ``LD_*,PYTHON*``)
``QUANTJOB_LOG_FORMAT``            ``plain``, ``full`` or ``json``
``QUANTJOB_API_SERVER``            explicit API server URL for the operator (out-of-cluster runs, tests)
``QUANTJOB_HEALTH_PORT``           port of kopf's liveness endpoint ``/healthz``; 0 = none
``QUANTJOB_METRICS_PORT``          port of the Prometheus endpoint ``/metrics``; 0 (default) = none
``QUANTJOB_WEBHOOK_ENABLED``       ``true``/``false``: serve the validating webhook
``QUANTJOB_WEBHOOK_FAILURE_POLICY`` ``Ignore`` (default: the CRD's own rules and the reconcile still hold)
                                   or ``Fail`` (no QuantJob write while the webhook is unreachable)
``QUANTJOB_WEBHOOK_PORT``          port the webhook server listens on
``QUANTJOB_WEBHOOK_TLS``           ``files`` (cert-manager or a mounted secret), ``self-signed``, ``insecure``
``QUANTJOB_WEBHOOK_CERT_DIR``      folder with ``tls.crt``, ``tls.key`` and (optionally) ``ca.crt``
``QUANTJOB_WEBHOOK_SERVICE``       name of the Service in front of the webhook server
``QUANTJOB_WEBHOOK_NAMESPACE``     its namespace (defaults to ``POD_NAMESPACE``)
``QUANTJOB_WEBHOOK_CONFIGURATION`` name of the ValidatingWebhookConfiguration the operator manages;
                                   empty = registered by someone else (the chart, cert-manager's CA injector)
=================================  =================================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantjob.api import kube_rules
from quantjob.api.problems import field_error
from quantjob.api.resource import DEFAULT_RESOURCE_NAMES, GangScheduler, PodOverlay

LogFormat = Literal["plain", "full", "json"]
WebhookTls = Literal["files", "self-signed", "insecure"]
FailurePolicy = Literal["Ignore", "Fail"]


class PodDefaults(PodOverlay):
    """The operator-wide pod overlay, written by the cluster administrator: host paths allowed
    (the Ascend driver and tools when the container runtime does not mount them), and env."""

    ALLOWED_VOLUME_SOURCES: ClassVar[tuple[str, ...]] = (*PodOverlay.ALLOWED_VOLUME_SOURCES, "hostPath")
    CONFINED: ClassVar[bool] = False  # the administrator mounts the driver under /usr/local/Ascend

    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            error = kube_rules.env_name(name)
            if error:
                raise field_error(name, error)
        return value

DEFAULT_WORKER_IMAGE = "ghcr.io/quantjob/quantjob-worker:0.1.0"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable or flag."""


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    listen_addr: str = "0.0.0.0"
    port: int = Field(default=9443, ge=1, le=65535)
    tls: WebhookTls = "files"
    cert_dir: str = "/etc/quantjob/webhook-tls"
    service: str = "quantjob-webhook"
    namespace: str = "quantjob-system"
    service_port: int = Field(default=443, ge=1, le=65535)
    configuration: str = "quantjob.io"
    failure_policy: FailurePolicy = "Ignore"


class Settings(BaseModel):
    """Everything the operator needs beyond the QuantJob itself."""

    model_config = ConfigDict(extra="forbid")

    namespaces: list[str] = Field(default_factory=list)
    worker_image: str = Field(default=DEFAULT_WORKER_IMAGE, min_length=1)
    npu_resource_name: str = Field(default=DEFAULT_RESOURCE_NAMES["npu"] or "", min_length=1)
    cuda_resource_name: str = Field(default=DEFAULT_RESOURCE_NAMES["cuda"] or "", min_length=1)
    npu_runtime_class: str | None = None
    master_port: int = Field(default=29500, ge=1, le=65535)
    gang_scheduling: GangScheduler = "none"
    volcano_scheduler: str = "volcano"
    coscheduling_scheduler: str = "scheduler-plugins-scheduler"
    pod_defaults: PodDefaults = Field(default_factory=lambda: PodDefaults.model_validate({}))
    resync_seconds: float = Field(default=30.0, gt=0, le=3600)
    progress_reporting: bool = True
    network_policy: bool = False
    allow_trust_remote_code: bool = True
    allow_custom_image: bool = True
    env_allow: list[str] = Field(default_factory=list)
    env_deny: list[str] = Field(default_factory=list)
    log_format: LogFormat = "full"
    api_server: str | None = None
    health_port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    webhook: WebhookSettings = Field(default_factory=lambda: WebhookSettings())

    @field_validator("npu_runtime_class", "api_server")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("npu_runtime_class", "volcano_scheduler", "coscheduling_scheduler")
    @classmethod
    def _subdomain(cls, value: str | None) -> str | None:
        if value:
            error = kube_rules.dns1123_subdomain(value)
            if error:
                raise ValueError(error)
        return value

    @field_validator("pod_defaults", mode="before")
    @classmethod
    def _parse_overlay(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError as error:
                raise ValueError(f"not YAML or JSON: {str(error).splitlines()[0]}") from None
            if value is None:
                return {}
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        ports = {"QUANTJOB_HEALTH_PORT": self.health_port, "QUANTJOB_METRICS_PORT": self.metrics_port}
        if self.webhook.enabled:
            ports["QUANTJOB_WEBHOOK_PORT"] = self.webhook.port
        used = [(name, port) for name, port in ports.items() if port]
        for index, (name, port) in enumerate(used):
            for other, other_port in used[index + 1:]:
                if port == other_port:
                    raise ValueError(f"{name} and {other} are both {port}; each endpoint needs its own port")
        return self

    @property
    def liveness_endpoint(self) -> str | None:
        """kopf's liveness endpoint URL, or None when ``health_port`` is 0."""
        return f"http://0.0.0.0:{self.health_port}/healthz" if self.health_port else None

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces

    def resource_name(self, device_type: str, override: str | None) -> str | None:
        """The extended resource a pod of ``device_type`` requests: the spec's override or our default."""
        if override:
            return override
        return {"npu": self.npu_resource_name, "cuda": self.cuda_resource_name}.get(device_type)


# environment variable -> (section, field); section None = top level.
ENVIRONMENT: dict[str, tuple[str | None, str]] = {
    "QUANTJOB_NAMESPACES": (None, "namespaces"),
    "QUANTJOB_WORKER_IMAGE": (None, "worker_image"),
    "QUANTJOB_NPU_RESOURCE_NAME": (None, "npu_resource_name"),
    "QUANTJOB_CUDA_RESOURCE_NAME": (None, "cuda_resource_name"),
    "QUANTJOB_NPU_RUNTIME_CLASS": (None, "npu_runtime_class"),
    "QUANTJOB_MASTER_PORT": (None, "master_port"),
    "QUANTJOB_GANG_SCHEDULING": (None, "gang_scheduling"),
    "QUANTJOB_VOLCANO_SCHEDULER": (None, "volcano_scheduler"),
    "QUANTJOB_COSCHEDULING_SCHEDULER": (None, "coscheduling_scheduler"),
    "QUANTJOB_POD_DEFAULTS": (None, "pod_defaults"),
    "QUANTJOB_RESYNC_SECONDS": (None, "resync_seconds"),
    "QUANTJOB_PROGRESS_REPORTING": (None, "progress_reporting"),
    "QUANTJOB_NETWORK_POLICY": (None, "network_policy"),
    "QUANTJOB_ALLOW_TRUST_REMOTE_CODE": (None, "allow_trust_remote_code"),
    "QUANTJOB_ALLOW_CUSTOM_IMAGE": (None, "allow_custom_image"),
    "QUANTJOB_ENV_ALLOW": (None, "env_allow"),
    "QUANTJOB_ENV_DENY": (None, "env_deny"),
    "QUANTJOB_LOG_FORMAT": (None, "log_format"),
    "QUANTJOB_API_SERVER": (None, "api_server"),
    "QUANTJOB_HEALTH_PORT": (None, "health_port"),
    "QUANTJOB_METRICS_PORT": (None, "metrics_port"),
    "QUANTJOB_WEBHOOK_ENABLED": ("webhook", "enabled"),
    "QUANTJOB_WEBHOOK_FAILURE_POLICY": ("webhook", "failure_policy"),
    "QUANTJOB_WEBHOOK_PORT": ("webhook", "port"),
    "QUANTJOB_WEBHOOK_TLS": ("webhook", "tls"),
    "QUANTJOB_WEBHOOK_CERT_DIR": ("webhook", "cert_dir"),
    "QUANTJOB_WEBHOOK_SERVICE": ("webhook", "service"),
    "QUANTJOB_WEBHOOK_NAMESPACE": ("webhook", "namespace"),
    "QUANTJOB_WEBHOOK_CONFIGURATION": ("webhook", "configuration"),
}


LIST_FIELDS = ("namespaces", "env_allow", "env_deny")


def _env_value(field: str, raw: str) -> Any:
    if field in LIST_FIELDS:
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def load_settings(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from ``environ`` (``QUANTJOB_*``), then ``overrides`` (flags; ``webhook.port`` style keys).

    Raises ``SettingsError`` naming the variable or flag whose value is wrong.
    """
    data: dict[str, Any] = {"webhook": {}}
    origin: dict[tuple[str, ...], str] = {}
    if "POD_NAMESPACE" in environ:
        data["webhook"]["namespace"] = environ["POD_NAMESPACE"]
        origin[("webhook", "namespace")] = "POD_NAMESPACE"
    for variable, (section, field) in ENVIRONMENT.items():
        if variable not in environ:
            continue
        target = data if section is None else data[section]
        target[field] = _env_value(field, environ[variable])
        origin[(field,) if section is None else (section, field)] = f"environment variable {variable}"
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, field = key.rpartition(".")
        (data[section] if section else data)[field] = value
        origin[tuple(key.split("."))] = f"flag for {key}"
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        lines = []
        for item in error.errors(include_url=False):
            loc = tuple(str(part) for part in item["loc"])
            source = origin.get(loc[:2]) or origin.get(loc[:1]) or ".".join(loc)
            detail = ".".join(loc[1:]) if loc[:1] == ("pod_defaults",) and len(loc) > 1 else ""
            shown = item.get("input")
            text = json.dumps(shown)[:200] if isinstance(shown, (dict, list)) else repr(shown)
            lines.append(f"{source}: {detail + ': ' if detail else ''}{item['msg']} (got {text})")
        raise SettingsError("invalid operator settings: " + "; ".join(lines)) from None
