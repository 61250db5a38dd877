"""Helpers for operator tests against the kmock emulator: manifests, lookups, polling, a running operator."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock as kmocklib
import kopf
import pytest

from quantjob.api.resource import GROUP, KIND, PLURAL, VERSION
from quantjob.operator.main import run_operator
from quantjob.operator.settings import Settings

NAMESPACE = "ml"
QUANTJOBS = f"{GROUP}/{VERSION}/{PLURAL}"


def quantjob_manifest(name: str = "qwen2-w8a8", *, uid: str = "uid-1", count: int = 2, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"pvc": "models", "path": "Qwen2-7B"},
        "output": {"pvc": "quantized", "path": "Qwen2-7B-w8a8"},
        "devices": {"type": "npu", "count": count},
        "calibration": {"path": "calib/boolq.jsonl", "samples": 16, "maxLength": 256},
        "quantType": "w8a8",
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": uid}, "spec": body}


VOLCANO_PODGROUPS = "scheduling.volcano.sh/v1beta1/podgroups"


def declare_resources(kmock: kmocklib.KubernetesEmulator) -> kmocklib.KubernetesEmulator:
    """kmock with the built-in resources, QuantJobs (with a status subresource) and Volcano's PodGroups."""
    kmock.resources.load_bundled()
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    kmock.resources[QUANTJOBS] = kmocklib.ResourceInfo(
        kind=KIND, singular="quantjob", namespaced=True, subresources={"status"}, verbs=verbs)
    kmock.resources[VOLCANO_PODGROUPS] = kmocklib.ResourceInfo(
        kind="PodGroup", singular="podgroup", namespaced=True, subresources={"status"}, verbs=verbs)
    return kmock


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stored(cluster: kmocklib.KubernetesEmulator, resource: str, name: str,
           namespace: str | None = NAMESPACE) -> dict[str, Any] | None:
    """The live object, or None when absent or deleted."""
    key = (kmocklib.resource(resource), namespace, name)
    if key not in cluster.objects or cluster.objects[key].deleted:
        return None
    return dict(cluster.objects[key].raw)


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with its last value after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(0.1)


def _for_tests(settings: kopf.OperatorSettings) -> None:
    settings.scanning.disabled = True  # kmock 0.8 answers 500 on GET /api/v1/namespaces
    settings.watching.reconnect_backoff = 0.1
    settings.posting.enabled = False


@contextlib.asynccontextmanager
async def operator_running(settings: Settings) -> AsyncIterator[None]:
    """kopf with our registry in this event loop, cluster-wide, until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_operator(settings, stop_flag=stop, liveness_endpoint=None, adjust=_for_tests))
    await asyncio.sleep(1.0)  # let the watchers start
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=15)
        except asyncio.CancelledError:
            if not task.cancelled():  # we are cancelled ourselves: pass it on
                raise
            # seen with the webhook server running: kopf's shutdown cancels the operator task itself


def operator_settings(cluster: kmocklib.KubernetesEmulator, **overrides: Any) -> Settings:
    """Settings that point the operator at ``cluster``; the webhook is off unless overridden, and
    every QuantJob is reconciled twice a second (what no event announces is seen quickly)."""
    data: dict[str, Any] = {"api_server": str(cluster.url), "webhook": {"enabled": False}, "resync_seconds": 0.5}
    data.update(overrides)
    return Settings.model_validate(data)


# --- fixtures shared by tests/operator and tests/e2e (their conftests re-export them) ---------------

@pytest.fixture()
def cluster(kmock: kmocklib.KubernetesEmulator) -> kmocklib.KubernetesEmulator:
    """kmock with the built-in resources and QuantJobs (with a status subresource)."""
    return declare_resources(kmock)


@pytest.fixture()
def start_operator(cluster: kmocklib.KubernetesEmulator) -> Callable[..., contextlib.AbstractAsyncContextManager[None]]:
    """``async with start_operator(**settings): ...`` runs kopf with our handlers against ``cluster``."""
    def start(**overrides: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return operator_running(operator_settings(cluster, **overrides))
    return start
