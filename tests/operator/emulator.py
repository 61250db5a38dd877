"""Helpers for operator tests against the kmock emulator: manifests, lookups, polling, a running operator."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock as kmocklib
import kopf
import pytest
from aiohttp import web

from quantjob.api.resource import GROUP, KIND, PLURAL, VERSION
from quantjob.operator.certificates import write_self_signed
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


_QUOTAS: dict[int, list[tuple[Any, str, int]]] = {}  # id(emulator) -> (resource, namespace, hard)


def _with_admission(cluster: kmocklib.KubernetesEmulator) -> None:
    """Give ``cluster`` an admission step that runs before kmock stores a create (kmock stores every
    create first, then answers, and answers an existing name 409 before any reaction could refuse)."""
    base = type(cluster)
    if getattr(base, "_quantjob_admission", False):
        return

    class Admitting(base):  # type: ignore[misc,valid-type]
        __slots__ = ()
        _quantjob_admission = True

        async def _handle(self, request: Any) -> web.StreamResponse:
            if request.resource is not None and str(request.action).lower().endswith("create"):
                data = request.data if isinstance(request.data, dict) else {}
                namespace = request.namespace or (data.get("metadata") or {}).get("namespace")
                for resource, quota_namespace, hard in _QUOTAS.get(id(self), []):
                    if request.resource == resource and namespace == quota_namespace \
                            and _live(self, resource, namespace) >= hard:
                        plural = resource.plural
                        return web.json_response({
                            "apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Forbidden",
                            "code": 403, "message": f"{plural} \"{(data.get('metadata') or {}).get('name')}\" is "
                                                    f"forbidden: exceeded quota: object-counts, requested: "
                                                    f"count/{plural}=1, used: count/{plural}={hard}, limited: "
                                                    f"count/{plural}={hard}"}, status=403)
            return await super()._handle(request)

    cluster.__class__ = Admitting


def _live(cluster: kmocklib.KubernetesEmulator, resource: Any, namespace: str | None) -> int:
    return sum(1 for (res, ns, _), obj in cluster.objects.items() if res == resource and ns == namespace
               and not obj.deleted)


def live_count(cluster: kmocklib.KubernetesEmulator, resource: str, namespace: str | None = NAMESPACE) -> int:
    """How many objects of ``resource`` exist (not deleted) in ``namespace``."""
    return _live(cluster, kmocklib.resource(resource), namespace)


def object_count_quota(cluster: kmocklib.KubernetesEmulator, resource: str, hard: int,
                       namespace: str = NAMESPACE) -> None:
    """A ResourceQuota ``count/<resource>: hard`` in ``namespace``, as the API server enforces it:
    quota admission runs before storage, so once ``hard`` objects exist every create is refused with
    403 "exceeded quota", a create of an object that exists included (it never reaches the 409;
    kubernetes/kubernetes#106842). Refused creates store nothing."""
    _with_admission(cluster)
    _QUOTAS.setdefault(id(cluster), []).append((kmocklib.resource(resource), namespace, hard))


def pods_of(cluster: kmocklib.KubernetesEmulator, job: str, namespace: str = NAMESPACE) -> list[str]:
    """Names of the live pods the Job controller made for Job ``job``."""
    pods = kmocklib.resource("v1/pods")
    return [name for (res, ns, name), obj in cluster.objects.items()
            if res == pods and ns == namespace and not obj.deleted
            and ((obj.raw.get("metadata") or {}).get("labels") or {}).get("batch.kubernetes.io/job-name") == job]


def start_terminating(cluster: kmocklib.KubernetesEmulator, job: str, since: str, node: str = "node-1",
                      namespace: str = NAMESPACE) -> list[str]:
    """What the garbage collector and a kubelet do after Job ``job`` is deleted (background
    propagation): each of its pods gets a ``deletionTimestamp`` and stays, still Running, until its
    kubelet confirms the container ended (``finish_terminating``); a kubelet on an unreachable node
    never does. Returns the pods' names."""
    names = pods_of(cluster, job, namespace)
    for name in names:
        obj = cluster.objects[kmocklib.resource("v1/pods"), namespace, name]
        obj.patch({"metadata": {"deletionTimestamp": since}, "spec": {"nodeName": node}})
    return names


def finish_terminating(cluster: kmocklib.KubernetesEmulator, names: list[str], namespace: str = NAMESPACE) -> None:
    """The kubelet confirms: the pods are removed from the API."""
    for name in names:
        cluster.objects[kmocklib.resource("v1/pods"), namespace, name].delete()


EVENT_TTL_S = 3600  # kube-apiserver --event-ttl default


def record_event(cluster: kmocklib.KubernetesEmulator, involved: dict[str, Any], reason: str, message: str,
                 at: datetime.datetime, namespace: str = NAMESPACE) -> str:
    """A core Event as a controller posts it (``lastTimestamp`` = ``at``); returns its name."""
    name = f"{involved['name']}.{int(at.timestamp() * 1e6):x}"
    stamp = at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.objects[kmocklib.resource("v1/events"), namespace, name] = {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {"namespace": namespace, **involved}, "reason": reason, "message": message,
        "type": "Warning", "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}
    return name


def age_events(cluster: kmocklib.KubernetesEmulator, now: datetime.datetime, ttl_s: float = EVENT_TTL_S) -> int:
    """What the API server does to events: drop those last seen more than ``ttl_s`` before ``now``
    (until then they stay, however stale). Returns how many went."""
    events, gone = kmocklib.resource("v1/events"), 0
    for (res, _, _), obj in list(cluster.objects.items()):
        if res != events or obj.deleted:
            continue
        text = str(obj.raw.get("lastTimestamp") or "")
        at = datetime.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
        if at is not None and (now - at).total_seconds() > ttl_s:
            obj.delete()
            gone += 1
    return gone


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
async def operator_running(settings: Settings, *, threaded: bool = False) -> AsyncIterator[None]:
    """kopf with our registry in this event loop, cluster-wide, until the block ends.

    ``threaded``: in an event loop of its own on a thread instead, for blocks that start in one
    task and end in another (an async fixture's setup and teardown): kopf counts every task born
    after its start as hung and waits 5 s for it at shutdown, the teardown task waiting on kopf
    included."""
    if threaded:
        flag = threading.Event()
        thread = threading.Thread(target=lambda: asyncio.run(run_operator(
            settings, stop_flag=flag, liveness_endpoint=None, adjust=_for_tests)), daemon=True)
        thread.start()
        await asyncio.sleep(1.0)  # let the watchers start
        try:
            yield
        finally:
            flag.set()
            await asyncio.to_thread(thread.join, 15)
        return
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
    def start(*, threaded: bool = False, **overrides: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return operator_running(operator_settings(cluster, **overrides), threaded=threaded)
    return start


@dataclass
class TlsFront:
    """An HTTPS endpoint in front of kmock, as a pod sees the API server in a cluster: host, port and
    the CA to trust (``ca.crt``); it records the bearer token of every request it forwards."""

    host: str
    port: int
    ca_file: Path
    tokens: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def tls_front(upstream: str, folder: Path) -> AsyncIterator[TlsFront]:
    """Forward ``https://127.0.0.1:<port>/...`` to ``upstream`` (kmock's plain HTTP URL)."""
    files = write_self_signed(folder, ["127.0.0.1", "localhost"])
    front = TlsFront("127.0.0.1", free_port(), files.certfile)
    base = upstream.rstrip("/")

    async def forward(request: web.Request) -> web.Response:
        front.tokens.append(request.headers.get("Authorization", ""))
        headers = {key: value for key, value in request.headers.items()
                   if key in ("Content-Type", "Accept", "User-Agent")}
        async with aiohttp.ClientSession() as session, session.request(
                request.method, base + request.path_qs, data=await request.read(), headers=headers) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                content_type=answer.content_type or "application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    # a watch the front forwards stays open until its client goes: cleanup would wait for it up to
    # aiohttp's default 60 s graceful shutdown after every test
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.certfile, files.keyfile)
    site = web.TCPSite(runner, front.host, front.port, ssl_context=context)
    await site.start()
    try:
        yield front
    finally:
        await runner.cleanup()
