"""Rank 0's progress reporter: merge-patches its QuantJob's progress ConfigMap.

Standard library only (no torch, no kubernetes client): it runs in the worker image. The worker
never writes the QuantJob itself: its Role allows ``get``/``patch`` on one ConfigMap
(``QUANTJOB_PROGRESS_CONFIGMAP``), and the operator mirrors that into ``status.progress`` and the
attempt's resume point into ``status.attempts``.

It talks to the API server only through the in-cluster configuration: ``https://`` +
``KUBERNETES_SERVICE_HOST``/``_PORT`` (set by the kubelet; a QuantJob cannot set ``KUBERNETES_*``)
with the projected token and the cluster CA from the account directory; without that CA it sends
nothing (no token ever goes over an unverified or plain connection). A failed patch is logged and
never stops the quantization.
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

from quantjob.worker.progress import LayerClock

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PROGRESS_KEY = "progress.json"
MIN_INTERVAL_S = 2.0
TIMEOUT_S = 5.0


class KubernetesProgress:
    """A ``ProgressHook``: ``start``, ``layer_done`` (rate-limited), ``finish`` (always sent)."""

    def __init__(self, config_map: str, namespace: str, server: str, *, token_file: Path, ca_file: Path,
                 attempt: int = 1, min_interval: float = MIN_INTERVAL_S, timeout: float = TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not server.startswith("https://"):
            raise ValueError(f"progress is reported over https only, not {server!r}")
        self.url = (f"{server.rstrip('/')}/api/v1/namespaces/{urllib.parse.quote(namespace)}/configmaps/"
                    f"{urllib.parse.quote(config_map)}")
        self.token_file = token_file
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.min_interval = min_interval
        self.timeout = timeout
        self.clock = clock
        self.state: dict[str, Any] = {"attempt": attempt}
        self.layers = LayerClock(clock)
        self.last_sent: float | None = None
        self.dirty = False
        self.failures = 0

    def start(self, total_layers: int, resumed_from: int = 0) -> None:
        self.layers.start(resumed_from)
        self.state.pop("secondsPerLayer", None)
        self.state.update(layersDone=0, layersTotal=total_layers, currentLayer=0 if total_layers else None,
                          lastLayerError=None, resumedFrom=resumed_from)
        self._send(force=True)

    def layer_done(self, done: int, total: int, layer_error: float | None = None) -> None:
        self.layers.layer_done(done)
        self.state.update(layersDone=done, layersTotal=total, currentLayer=done if done < total else None)
        if self.layers.seconds_per_layer is not None:  # this attempt's own pace: the operator's ETA
            self.state["secondsPerLayer"] = round(self.layers.seconds_per_layer, 3)
        if layer_error is not None:
            self.state["lastLayerError"] = float(layer_error)
        self.dirty = True
        self._send(force=done >= total)

    def finish(self, ok: bool, message: str = "") -> None:
        if self.dirty:
            self._send(force=True)
        if not ok:
            log.info("quantization failed (%s); the operator reports it from the pod's termination message",
                     message or "no message")

    def _send(self, force: bool) -> None:
        now = self.clock()
        if not force and self.last_sent is not None and now - self.last_sent < self.min_interval:
            return
        self.last_sent = now
        self.dirty = False
        self._patch()

    def _patch(self) -> None:
        data = json.dumps({"data": {PROGRESS_KEY: json.dumps(self.state, sort_keys=True)}}).encode()
        request = urllib.request.Request(self.url, data=data, method="PATCH",
                                         headers={"Content-Type": "application/merge-patch+json",
                                                  "Accept": "application/json"})
        try:
            # re-read every time: projected tokens rotate
            request.add_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                response.read()
        except urllib.error.HTTPError as error:
            self.failures += 1
            log.warning("progress patch to %s refused: HTTP %s %s (check the worker Role allows patch on "
                        "this ConfigMap)", self.url, error.code, error.reason)
        except (OSError, ValueError) as error:
            self.failures += 1
            log.warning("progress patch to %s failed: %s; quantization continues", self.url, error)


def progress_from_environment(environ: Mapping[str, str] = os.environ,
                              account_dir: Path | None = None) -> KubernetesProgress | None:
    """The reporter for the ConfigMap named by ``QUANTJOB_PROGRESS_CONFIGMAP``, or None (outside a
    QuantJob pod, or when the in-cluster configuration is incomplete: then a warning says what)."""
    config_map = environ.get("QUANTJOB_PROGRESS_CONFIGMAP")
    if not config_map:
        return None
    folder = account_dir or Path(environ.get("QUANTJOB_SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT_DIR)
    namespace = environ.get("QUANTJOB_NAMESPACE")
    if not namespace and (folder / "namespace").is_file():
        namespace = (folder / "namespace").read_text().strip()
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
    token, ca = folder / "token", folder / "ca.crt"
    missing = [what for what, ok in (("the namespace (QUANTJOB_NAMESPACE)", bool(namespace)),
                                     ("the API server (KUBERNETES_SERVICE_HOST)", bool(host)),
                                     (f"a token ({token})", token.is_file()),
                                     (f"the cluster CA ({ca})", ca.is_file())) if not ok]
    if missing:
        log.warning("progress is not reported: %s missing", ", ".join(missing))
        return None
    assert host is not None and namespace is not None
    server = f"https://{f'[{host}]' if ':' in host else host}:{port}"
    try:
        attempt = int(environ.get("QUANTJOB_ATTEMPT") or 1)
    except ValueError:
        attempt = 1
    return KubernetesProgress(config_map, namespace, server, token_file=token, ca_file=ca, attempt=attempt)
