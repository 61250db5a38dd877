"""Render charts/quantjob offline (helm-python-sdk: Helm's own library, no binary) and write deploy/.

    python3 tests/chart/render.py          # rewrites deploy/*.yaml from the chart

deploy/*.yaml is the chart rendered for `kubectl apply` users, so the chart is the only source:
tests/chart/test_chart.py fails when a deploy/ file differs from a fresh render.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "quantjob"
DEPLOY = ROOT / "deploy"
RELEASE = "quantjob"
NAMESPACE = "quantjob-system"
# The order `kubectl apply -f` creates them in (what a pod or a binding refers to comes first).
KIND_ORDER = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
              "Issuer", "Certificate", "Service", "ValidatingWebhookConfiguration", "Deployment", "ServiceMonitor")
# deploy/ files: name -> (header, values)
DEPLOY_FILES: dict[str, tuple[str, dict[str, Any]]] = {
    "quantjob.yaml": (
        "The operator without Helm, webhook TLS self-signed by the operator.", {}),
    "quantjob-cert-manager.yaml": (
        "The operator without Helm, webhook TLS from cert-manager (a self-signed Issuer and a Certificate).",
        {"webhook": {"certManager": {"enabled": True}}}),
}


@contextmanager
def chart() -> Iterator[helm_python.Chart]:
    loaded = helm_python.Chart.load(str(CHART))
    try:
        yield loaded
    finally:
        loaded.close()


def render(values: Mapping[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE, upgrade: bool = False) -> tuple[list[dict[str, Any]], str]:
    """The chart's objects (in apply order) and its NOTES.txt, for ``values`` over the defaults
    (``upgrade``: as ``helm upgrade`` renders them)."""
    with chart() as loaded:
        files = loaded.render(dict(values or {}), name=name, namespace=namespace, is_install=not upgrade,
                              is_upgrade=upgrade)
    notes = ""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    objects.sort(key=lambda obj: KIND_ORDER.index(obj["kind"]) if obj["kind"] in KIND_ORDER else len(KIND_ORDER))
    return objects, notes


def namespace_object(namespace: str = NAMESPACE) -> dict[str, Any]:
    """The release namespace, labelled for the restricted Pod Security Standard the operator meets."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}


def deploy_text(header: str, values: Mapping[str, Any]) -> str:
    objects, _ = render(values)
    lines = [f"# {header}",
             "# Generated from charts/quantjob by `python3 tests/chart/render.py` (release quantjob in",
             "# quantjob-system); do not edit: change the chart and run it again.",
             "#   kubectl apply -f crds/quantjob.io_quantjobs.yaml",
             "#   kubectl apply -f deploy/<this file>"]
    body = yaml.safe_dump_all([namespace_object(), *objects], sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + body


def main() -> int:
    DEPLOY.mkdir(exist_ok=True)
    for name, (header, values) in DEPLOY_FILES.items():
        (DEPLOY / name).write_text(deploy_text(header, values), encoding="utf-8")
        print(f"wrote {DEPLOY / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
