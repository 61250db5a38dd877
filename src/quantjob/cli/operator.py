"""``quantjob operator``: run the Kubernetes operator (kopf). Settings from QUANTJOB_* env, flags win.

``quantjob operator --print-rbac [-n NS ...]`` prints the RBAC these settings need (namespaced Roles
when namespaces are given) and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "operator", help="run the QuantJob operator (watches QuantJobs, serves the validating webhook)",
        description="Run the QuantJob operator. Every flag has a QUANTJOB_* environment variable "
                    "(see docs/operator.md); flags override the environment.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                       help="namespace to watch (repeatable); default: QUANTJOB_NAMESPACES or all")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch the whole cluster")
    parser.add_argument("--worker-image", help="worker image for QuantJobs without spec.image")
    parser.add_argument("--npu-resource-name", help="extended resource of npu pods (huawei.com/Ascend910)")
    parser.add_argument("--cuda-resource-name", help="extended resource of cuda pods (nvidia.com/gpu)")
    parser.add_argument("--npu-runtime-class", help="runtimeClassName of npu pods (checked to exist); '' for none")
    parser.add_argument("--gang-scheduling", choices=["none", "volcano", "coscheduling"],
                        help="default gang scheduler for QuantJobs without spec.scheduling.gang")
    parser.add_argument("--volcano-scheduler", help="schedulerName of Volcano (volcano)")
    parser.add_argument("--coscheduling-scheduler", help="schedulerName of the coscheduling plugin")
    parser.add_argument("--pod-defaults", metavar="FILE", help="YAML pod overlay applied to every worker pod")
    parser.add_argument("--resync-seconds", type=float, help="reconcile every QuantJob this often (30)")
    parser.add_argument("--progress-reporting", type=_bool, metavar="BOOL",
                        help="rank 0 reports progress through a short-lived token (true)")
    parser.add_argument("--network-policy", type=_bool, metavar="BOOL",
                        help="a NetworkPolicy per QuantJob admits only its own pods (false)")
    parser.add_argument("--allow-trust-remote-code", type=_bool, metavar="BOOL",
                        help="admit QuantJobs with model.trustRemoteCode (true)")
    parser.add_argument("--allow-custom-image", type=_bool, metavar="BOOL", help="admit QuantJobs with spec.image")
    parser.add_argument("--env-allow", metavar="GLOBS", help="comma-separated globs spec.env keys must match")
    parser.add_argument("--env-deny", metavar="GLOBS", help="comma-separated globs spec.env keys must not match")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], help="json for clusters")
    parser.add_argument("--api-server", help="API server URL (default: in-cluster account or kubeconfig)")
    parser.add_argument("--webhook-port", type=int, help="port of the validating webhook server")
    parser.add_argument("--webhook-tls", choices=["files", "self-signed", "insecure"],
                        help="files: mounted cert-manager/secret certificate; self-signed: made at start")
    parser.add_argument("--webhook-failure-policy", choices=["Ignore", "Fail"],
                        help="failurePolicy of the webhook registration (Ignore)")
    parser.add_argument("--no-webhook", action="store_true", help="do not serve the validating webhook")
    parser.add_argument("--health-port", type=int, help="port of the liveness endpoint /healthz (0: none; default 8080)")
    parser.add_argument("--metrics-port", type=int, help="port of the Prometheus endpoint /metrics (0: none, the default)")
    parser.add_argument("--print-rbac", action="store_true",
                        help="print the RBAC these settings need (namespaced Roles with -n) and exit")
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.set_defaults(run=run)


def _globs(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    pod_defaults = Path(args.pod_defaults).read_text(encoding="utf-8") if args.pod_defaults else None
    result: dict[str, Any] = {
        "namespaces": [] if args.all_namespaces else args.namespaces,
        "worker_image": args.worker_image,
        "npu_resource_name": args.npu_resource_name,
        "cuda_resource_name": args.cuda_resource_name,
        "npu_runtime_class": args.npu_runtime_class,
        "gang_scheduling": args.gang_scheduling,
        "volcano_scheduler": args.volcano_scheduler,
        "coscheduling_scheduler": args.coscheduling_scheduler,
        "pod_defaults": pod_defaults,
        "resync_seconds": args.resync_seconds,
        "progress_reporting": args.progress_reporting,
        "network_policy": args.network_policy,
        "allow_trust_remote_code": args.allow_trust_remote_code,
        "allow_custom_image": args.allow_custom_image,
        "env_allow": _globs(args.env_allow),
        "env_deny": _globs(args.env_deny),
        "log_format": args.log_format,
        "api_server": args.api_server,
        "webhook.port": args.webhook_port,
        "webhook.tls": args.webhook_tls,
        "webhook.failure_policy": args.webhook_failure_policy,
        "webhook.enabled": False if args.no_webhook else None,
        "health_port": args.health_port,
        "metrics_port": args.metrics_port,
    }
    return result


def run(args: argparse.Namespace) -> int:
    from quantjob.operator.settings import SettingsError, load_settings

    try:
        settings = load_settings(os.environ, overrides_from(args))
    except (SettingsError, OSError) as error:
        print(f"quantjob operator: {error}", file=sys.stderr)
        return 2
    if args.print_rbac:
        import yaml

        from quantjob.operator.rbac import build_rbac

        sys.stdout.write(yaml.safe_dump_all(build_rbac(settings, settings.webhook.namespace), sort_keys=False))
        return 0
    from quantjob.operator.main import main

    return main(settings, verbose=args.verbose)
