"""Rank 0's progress reporter: merge-patches ``status.progress`` of its own QuantJob.

Standard library only (no torch, no kubernetes client): it runs in the worker image. It talks to
the API server with the pod's ServiceAccount (token and CA under
``/var/run/secrets/kubernetes.io/serviceaccount``), whose Role allows ``get``/``patch`` on this
QuantJob's ``status`` and nothing else. A failed patch is logged and never stops the quantization.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP_VERSION = "quantjob.io/v1alpha1"
PLURAL = "quantjobs"
MIN_INTERVAL_S = 2.0
TIMEOUT_S = 5.0


class KubernetesProgress:
    """A ``ProgressHook``: ``start``, ``layer_done`` (rate-limited), ``finish`` (always sent)."""

    def __init__(self, name: str, namespace: str, server: str, *, token_file: Path | None = None,
                 ca_file: Path | None = None, min_interval: float = MIN_INTERVAL_S, timeout: float = TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = (f"{server.rstrip('/')}/apis/{GROUP_VERSION}/namespaces/{urllib.parse.quote(namespace)}/"
                    f"{PLURAL}/{urllib.parse.quote(name)}/status")
        self.token_file = token_file
        self.context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self.min_interval = min_interval
        self.timeout = timeout
        self.clock = clock
        self.last_sent: float | None = None
        self.pending: dict[str, Any] | None = None
        self.failures = 0

    def start(self, total_layers: int) -> None:
        self._send({"layersDone": 0, "layersTotal": total_layers, "summary": f"0/{total_layers}",
                    "currentLayer": 0 if total_layers else None, "lastLayerError": None}, force=True)

    def layer_done(self, done: int, total: int, layer_error: float | None = None) -> None:
        progress: dict[str, Any] = {"layersDone": done, "layersTotal": total, "summary": f"{done}/{total}",
                                    "currentLayer": done if done < total else None}
        if layer_error is not None:
            progress["lastLayerError"] = float(layer_error)
        self._send(progress, force=done >= total)

    def finish(self, ok: bool, message: str = "") -> None:
        if self.pending is not None:
            self._send({}, force=True)
        if not ok:
            log.info("quantization failed (%s); the operator reports it from the pod's termination message",
                     message or "no message")

    def _send(self, progress: dict[str, Any], force: bool) -> None:
        self.pending = {**(self.pending or {}), **progress}
        now = self.clock()
        if not force and self.last_sent is not None and now - self.last_sent < self.min_interval:
            return
        body, self.pending = self.pending, None
        self.last_sent = now
        self._patch(body)

    def _patch(self, progress: dict[str, Any]) -> None:
        data = json.dumps({"status": {"progress": progress}}).encode()
        request = urllib.request.Request(self.url, data=data, method="PATCH",
                                         headers={"Content-Type": "application/merge-patch+json",
                                                  "Accept": "application/json"})
        try:
            if self.token_file is not None:  # re-read: projected tokens rotate
                request.add_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                response.read()
        except urllib.error.HTTPError as error:
            self.failures += 1
            log.warning("progress patch to %s refused: HTTP %s %s (check the worker Role allows patch on "
                        "quantjobs/status)", self.url, error.code, error.reason)
        except (OSError, ValueError) as error:
            self.failures += 1
            log.warning("progress patch to %s failed: %s; quantization continues", self.url, error)


def progress_from_environment(environ: Mapping[str, str] = os.environ,
                              account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubernetesProgress | None:
    """The reporter for the QuantJob named by ``QUANTJOB_NAME``, or None outside a QuantJob pod.

    The server is ``QUANTJOB_API_SERVER`` if set, else ``https://$KUBERNETES_SERVICE_HOST:$..._PORT``
    with the ServiceAccount's token and CA.
    """
    name = environ.get("QUANTJOB_NAME")
    if not name:
        return None
    namespace = environ.get("QUANTJOB_NAMESPACE")
    if not namespace and (account_dir / "namespace").is_file():
        namespace = (account_dir / "namespace").read_text().strip()
    server = environ.get("QUANTJOB_API_SERVER")
    if not server and environ.get("KUBERNETES_SERVICE_HOST"):
        host = environ["KUBERNETES_SERVICE_HOST"]
        host = f"[{host}]" if ":" in host else host
        server = f"https://{host}:{environ.get('KUBERNETES_SERVICE_PORT', '443')}"
    if not namespace or not server:
        log.warning("QUANTJOB_NAME=%s is set but %s is unknown; progress is not reported", name,
                    "the namespace (QUANTJOB_NAMESPACE)" if not namespace else
                    "the API server (KUBERNETES_SERVICE_HOST or QUANTJOB_API_SERVER)")
        return None
    token = account_dir / "token"
    ca = account_dir / "ca.crt"
    return KubernetesProgress(name, namespace, server, token_file=token if token.is_file() else None,
                              ca_file=ca if ca.is_file() and server.startswith("https") else None)
