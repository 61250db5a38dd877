"""``quantjob operator``: run the Kubernetes operator (kopf). Settings from QUANTJOB_* env, flags win."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


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
    parser.add_argument("--npu-runtime-class", help="runtimeClassName of npu pods; '' for none")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], help="json for clusters")
    parser.add_argument("--api-server", help="API server URL (default: in-cluster account or kubeconfig)")
    parser.add_argument("--webhook-port", type=int, help="port of the validating webhook server")
    parser.add_argument("--webhook-tls", choices=["files", "self-signed", "insecure"],
                        help="files: mounted cert-manager/secret certificate; self-signed: made at start")
    parser.add_argument("--no-webhook", action="store_true", help="do not serve the validating webhook")
    parser.add_argument("--health-port", type=int, help="port of the liveness endpoint /healthz (0: none; default 8080)")
    parser.add_argument("--metrics-port", type=int, help="port of the Prometheus endpoint /metrics (0: none, the default)")
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.set_defaults(run=run)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "namespaces": [] if args.all_namespaces else args.namespaces,
        "worker_image": args.worker_image,
        "npu_resource_name": args.npu_resource_name,
        "cuda_resource_name": args.cuda_resource_name,
        "npu_runtime_class": args.npu_runtime_class,
        "log_format": args.log_format,
        "api_server": args.api_server,
        "webhook.port": args.webhook_port,
        "webhook.tls": args.webhook_tls,
        "webhook.enabled": False if args.no_webhook else None,
        "health_port": args.health_port,
        "metrics_port": args.metrics_port,
    }
    return result


def run(args: argparse.Namespace) -> int:
    from quantjob.operator.settings import SettingsError, load_settings

    try:
        settings = load_settings(os.environ, overrides_from(args))
    except SettingsError as error:
        print(f"quantjob operator: {error}", file=sys.stderr)
        return 2
    from quantjob.operator.main import main

    return main(settings, verbose=args.verbose)
