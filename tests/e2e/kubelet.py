"""A test-only kubelet and Job controller: run an Indexed Job stored in kmock as local processes.

``run_indexed_job(node, namespace, name)`` does over HTTP what the cluster would do for the Job the
operator created: it reads the Job and the ConfigMaps its pods mount, creates one Pod per completion
index in the API (labels and annotations as the Job controller sets them), starts each pod's single
container as a local process (the image's entry point, ``docker/worker-entrypoint.sh``, with the
container's ``args``) with the container's env, records every pod's termination in its Pod status,
and writes the Job's status (``active`` and ``ready``, then ``succeeded`` + ``Complete``, or
``failed`` + ``Failed`` with the reason Kubernetes gives) so the operator can follow it.

Pod failure policy, as the Job controller applies it: a failed pod is matched against
``podFailurePolicy.rules`` in order (``onExitCodes`` with ``In``/``NotIn`` on the container's exit
code, ``onPodConditions`` on the pod's conditions); ``FailJob`` fails the Job at once with reason
``PodFailurePolicy`` and Kubernetes' message (``... matching FailJob rule at index N``), ``Count`` or
no match counts against ``backoffLimit`` (then ``BackoffLimitExceeded``). The other ranks are then
terminated (SIGTERM, then SIGKILL) and deleted. A process killed by a signal exits with 128 + the
signal number, as a container does.

``faults``: an optional coroutine run beside the pods; it gets the runner and may stop or kill the
pods' processes (``signal_pod``) to play a crash, an OOM kill or a lost node.

What is faked, because there is no node:

- Volumes: a ``persistentVolumeClaim`` is the local directory ``FakeNode.claims[claimName]``; a
  ``configMap`` is a directory holding its ``data`` items as files; an ``emptyDir`` is a fresh
  directory per pod. Mount paths in the command, the args and literal env values are rewritten to
  those directories (longest mount path first). ``readOnly`` and ``subPath`` are not enforced.
- Network: there is no cluster DNS, so ``MASTER_ADDR`` (``<job>-0.<service>``) is rewritten to
  127.0.0.1, and ``MASTER_PORT`` to a free local port because all ranks share one host; ``status.podIP``
  is 127.0.0.1. ``KUBERNETES_SERVICE_HOST``/``_PORT`` name an HTTPS front of kmock (as the kubelet
  names the cluster's API service), and a ``projected`` volume gets a fake token, that front's CA as
  ``ca.crt`` and the namespace: the worker talks to it exactly as in a cluster. RBAC is not checked.
- Readiness: a running pod counts as ready (the worker has no readiness probe), so ``ready`` follows
  the running pods.
- Termination message: the worker writes ``/dev/termination-log`` only when that file exists, which
  it does in a real container and not here; with ``terminationMessagePolicy: FallbackToLogsOnError``
  Kubernetes would then use the log tail, so this kubelet takes the last non-empty stderr line.
- Retries: a failed pod that counts against ``backoffLimit`` fails the Job only when the limit is 0
  (the operator's Jobs); replacing a pod (``backoffLimit`` > 0, ``Ignore`` rules) is reported as
  unsupported rather than guessed. ``activeDeadlineSeconds`` and ``suspend`` are not emulated.
- Security context, resources, image, scheduling and gang scheduling are ignored: the entry point
  runs with this interpreter's ``bin`` directory on ``PATH`` (where the image has its entry points).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from emulator import free_port

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "worker-entrypoint.sh"
FAKE_TOKEN = "e2e-token"

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
LOCALHOST = "127.0.0.1"
KILL_GRACE_S = 10.0


class KubeletError(RuntimeError):
    """The Job or its pod spec asks for something this fake kubelet does not emulate."""


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class FakeNode:
    """What the fake node offers: the API server, the PVCs as local directories, scratch space."""

    api_url: str
    claims: Mapping[str, Path]
    workdir: Path
    api_host: str = ""       # the HTTPS front pods reach as the in-cluster API server
    api_port: int = 0
    api_ca: Path | None = None
    bin_dir: Path = Path(sys.executable).parent
    entrypoint: tuple[str, ...] = ("bash", str(ENTRYPOINT))
    pod_timeout_s: float = 180.0


@dataclass
class PodRun:
    """One pod: its local command and env, its logs, how it ended."""

    index: int
    name: str
    command: list[str]
    env: dict[str, str]
    directory: Path
    exit_code: int | None = None
    killed: bool = False  # terminated (and deleted) by the Job controller after another pod failed
    conditions: list[dict[str, str]] = field(default_factory=list)  # e.g. DisruptionTarget, set by a fault

    @property
    def stdout(self) -> Path:
        return self.directory / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.directory / "stderr.log"

    def termination_message(self) -> str:
        """The last non-empty stderr line (stands in for /dev/termination-log; see the module doc)."""
        lines = [line.strip() for line in self.stderr.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def describe(self) -> str:
        return (f"--- pod {self.name} (rank {self.index}) exit {self.exit_code}{' killed' if self.killed else ''}\n"
                f"command: {' '.join(self.command)}\n"
                f"stdout:\n{self.stdout.read_text(errors='replace')}\nstderr:\n"
                f"{self.stderr.read_text(errors='replace')}")


@dataclass
class JobRun:
    """The outcome of one Indexed Job."""

    name: str
    succeeded: bool
    pods: list[PodRun] = field(default_factory=list)

    def describe(self) -> str:
        return "\n".join(pod.describe() for pod in self.pods)


class Api:
    """The few HTTP calls a kubelet and a Job controller make, against kmock."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.session = session

    @staticmethod
    def path(api_version: str, plural: str, namespace: str, name: str | None = None) -> str:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        return f"{prefix}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any] | None:
        """The response object; None for 404 on GET. Other failures raise with the server's answer."""
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            if method == "GET" and response.status == 404:
                return None
            if response.status >= 300:
                raise KubeletError(f"{method} {path} answered {response.status}: {await response.text()}")
            data: dict[str, Any] = await response.json(content_type=None)
            return data

    async def get(self, path: str) -> dict[str, Any] | None:
        return await self.request("GET", path)

    async def create(self, path: str, body: Mapping[str, Any]) -> None:
        await self.request("POST", path, dict(body))

    async def patch_status(self, path: str, status: Mapping[str, Any]) -> None:
        await self.request("PATCH", f"{path}/status", {"status": dict(status)})

    async def delete(self, path: str) -> None:
        await self.request("DELETE", path)


async def apply(node: FakeNode, manifest: Mapping[str, Any]) -> None:
    """``kubectl create -f``: POST one namespaced object to the API server."""
    meta = manifest["metadata"]
    plural = f"{manifest['kind'].lower()}s"
    async with aiohttp.ClientSession() as session:
        await Api(node.api_url, session).create(
            Api.path(manifest["apiVersion"], plural, meta["namespace"]), manifest)


def localize(value: str, mounts: Sequence[tuple[str, Path]]) -> str:
    """``value`` with a leading container mount path replaced by its local directory."""
    for mount_path, local in sorted(mounts, key=lambda item: len(item[0]), reverse=True):
        root = mount_path.rstrip("/") or "/"
        if value == root:
            return str(local)
        if value.startswith(root + "/"):
            return str(local / value[len(root) + 1:])
    return value


def field_value(field_path: str, *, namespace: str, pod_name: str, labels: Mapping[str, str]) -> str:
    """A ``valueFrom.fieldRef`` as the kubelet resolves it (pod IP: this host)."""
    if field_path == "metadata.namespace":
        return namespace
    if field_path == "metadata.name":
        return pod_name
    if field_path in ("status.podIP", "status.hostIP"):
        return LOCALHOST
    if field_path.startswith("metadata.labels['") and field_path.endswith("']"):
        return labels.get(field_path[len("metadata.labels['"):-2], "")
    raise KubeletError(f"fieldRef {field_path!r} is not emulated; add it to tests/e2e/kubelet.py::field_value")


def container_env(container: Mapping[str, Any], mounts: Sequence[tuple[str, Path]], *, namespace: str,
                  pod_name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The container's ``env`` list resolved: literal values (paths localized) and fieldRefs."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = localize(str(item["value"]), mounts)
        elif "fieldRef" in (item.get("valueFrom") or {}):
            env[name] = field_value(item["valueFrom"]["fieldRef"]["fieldPath"], namespace=namespace,
                                    pod_name=pod_name, labels=labels)
        else:
            raise KubeletError(f"env {name}: only value and valueFrom.fieldRef are emulated, got {item!r}")
    if container.get("envFrom"):
        raise KubeletError("envFrom is not emulated; extend tests/e2e/kubelet.py::container_env")
    return env


class IndexedJobRunner:
    """The Job controller and the kubelet for one Indexed Job (one instance per run)."""

    def __init__(self, node: FakeNode, api: Api, namespace: str, job: dict[str, Any]) -> None:
        self.node = node
        self.api = api
        self.namespace = namespace
        self.job = job
        self.name: str = job["metadata"]["name"]
        self.job_path = Api.path("batch/v1", "jobs", namespace, self.name)
        spec = job["spec"]
        if spec.get("completionMode") != "Indexed":
            raise KubeletError(f"Job {self.name}: completionMode {spec.get('completionMode')!r}; only Indexed")
        if spec.get("suspend"):
            raise KubeletError(f"Job {self.name} is suspended; nothing here admits it (no Kueue)")
        self.completions = int(spec["completions"])
        if int(spec.get("parallelism", self.completions)) != self.completions:
            raise KubeletError(f"Job {self.name}: parallelism must equal completions (all ranks at once)")
        self.template = spec["template"]
        containers = self.template["spec"]["containers"]
        if len(containers) != 1 or self.template["spec"].get("initContainers"):
            raise KubeletError(f"Job {self.name}: exactly one container and no init containers are emulated")
        self.container = containers[0]
        self.backoff_limit = int(spec.get("backoffLimit", 6))
        self.rules = list((spec.get("podFailurePolicy") or {}).get("rules") or [])
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.pods: list[PodRun] = []

    async def volume_dir(self, volume: Mapping[str, Any], pod_dir: Path) -> Path:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in self.node.claims:
                raise KubeletError(f"volume {name}: PVC {claim!r} is not on this fake node; add it to "
                                   f"FakeNode.claims (have: {', '.join(sorted(self.node.claims))})")
            return self.node.claims[claim]
        local = pod_dir / "volumes" / name
        local.mkdir(parents=True)
        if "configMap" in volume:
            source = volume["configMap"]
            config_map = await self.api.get(Api.path("v1", "configmaps", self.namespace, source["name"]))
            if config_map is None:
                raise KubeletError(f"volume {name}: ConfigMap {source['name']!r} does not exist (the pod "
                                   "would stay in ContainerCreating)")
            for key, text in (config_map.get("data") or {}).items():
                (local / key).write_text(text, encoding="utf-8")
            return local
        if "emptyDir" in volume:
            return local
        if "projected" in volume:
            for source in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    (local / source["serviceAccountToken"]["path"]).write_text(FAKE_TOKEN)
                elif source.get("configMap", {}).get("name") == "kube-root-ca.crt":
                    if self.node.api_ca is None:
                        raise KubeletError("the pod mounts the cluster CA but FakeNode.api_ca is not set")
                    for item in source["configMap"].get("items") or []:
                        (local / item["path"]).write_bytes(self.node.api_ca.read_bytes())
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"].get("items") or []:
                        if item.get("fieldRef", {}).get("fieldPath") != "metadata.namespace":
                            raise KubeletError(f"projected downwardAPI {item!r} is not emulated")
                        (local / item["path"]).write_text(self.namespace)
                else:
                    raise KubeletError(f"volume {name}: projected source {sorted(source)} is not emulated")
            return local
        raise KubeletError(f"volume {name}: only persistentVolumeClaim, configMap, emptyDir and projected "
                           "are emulated")

    async def mounts(self, pod_dir: Path) -> list[tuple[str, Path]]:
        volumes = {volume["name"]: await self.volume_dir(volume, pod_dir)
                   for volume in self.template["spec"].get("volumes") or []}
        result = []
        for mount in self.container.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                raise KubeletError(f"volumeMount {mount['mountPath']}: no volume named {mount['name']!r}")
            local = volumes[mount["name"]]
            result.append((mount["mountPath"], local / mount["subPath"] if mount.get("subPath") else local))
        return result

    def executable(self, program: str) -> str:
        if os.path.isabs(program):
            raise KubeletError(f"command {program!r} is an absolute path inside the image; not emulated")
        local = self.node.bin_dir / program
        if not local.exists():
            raise KubeletError(f"command {program!r} is not in {self.node.bin_dir} (the image's PATH here)")
        return str(local)

    def argv(self, mounts: Sequence[tuple[str, Path]]) -> list[str]:
        """``command`` replaces the image's entry point; without it the entry point runs with ``args``."""
        args = [localize(arg, mounts) for arg in self.container.get("args") or []]
        command = self.container.get("command") or []
        if command:
            return [self.executable(command[0]), *(localize(arg, mounts) for arg in command[1:]), *args]
        return [*self.node.entrypoint, *args]

    async def prepare_pod(self, index: int, master_port: int) -> PodRun:
        name = f"{self.name}-{index}-e2e{index:02d}"  # the Job controller adds a random suffix
        pod_dir = self.node.workdir / name
        pod_dir.mkdir(parents=True)
        labels = {**(self.template.get("metadata") or {}).get("labels", {}), COMPLETION_INDEX: str(index),
                  **{key: self.name for key in JOB_NAME_LABELS}}
        mounts = await self.mounts(pod_dir)
        env = container_env(self.container, mounts, namespace=self.namespace, pod_name=name, labels=labels)
        # Set by Kubernetes itself: the completion index of an Indexed Job, the pod's hostname.
        env["JOB_COMPLETION_INDEX"] = str(index)
        env["HOSTNAME"] = f"{self.name}-{index}"
        # No cluster DNS here: <job>-0.<service> does not resolve, and every rank shares this host.
        if "MASTER_ADDR" in env:
            env["MASTER_ADDR"] = LOCALHOST
        if "MASTER_PORT" in env:
            env["MASTER_PORT"] = str(master_port)
        if self.node.api_host:  # what the kubelet sets for the cluster's API service
            env["KUBERNETES_SERVICE_HOST"] = self.node.api_host
            env["KUBERNETES_SERVICE_PORT"] = str(self.node.api_port)
        env["OMP_NUM_THREADS"] = "1"  # a shared CI machine
        env["PATH"] = f"{self.node.bin_dir}:/usr/local/bin:/usr/bin:/bin"
        if os.environ.get("PYTHONPATH"):  # the "image" is this interpreter with this checkout's sources
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        command = self.argv(mounts)
        await self.api.create(Api.path("v1", "pods", self.namespace), {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels,
                         "annotations": {COMPLETION_INDEX: str(index)},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": self.name,
                                              "uid": self.job["metadata"].get("uid", ""), "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {**self.template["spec"], "hostname": f"{self.name}-{index}", "nodeName": "e2e-node"},
            "status": {"phase": "Pending"}})
        return PodRun(index, name, command, env, pod_dir)

    async def start(self, pod: PodRun) -> asyncio.subprocess.Process:
        with pod.stdout.open("wb") as stdout, pod.stderr.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *pod.command, env=pod.env, cwd=pod.directory, stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout, stderr=stderr, start_new_session=True)
        await self.api.patch_status(Api.path("v1", "pods", self.namespace, pod.name), {
            "phase": "Running", "podIP": LOCALHOST, "hostIP": LOCALHOST, "startTime": now_iso(),
            "containerStatuses": [{"name": self.container["name"], "ready": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": now_iso()}}}]})
        return process

    async def record_exit(self, pod: PodRun, code: int) -> None:
        code = 128 - code if code < 0 else code  # killed by signal N: a container reports 128 + N
        pod.exit_code = code
        terminated: dict[str, Any] = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                      "finishedAt": now_iso()}
        if code != 0:
            terminated["message"] = pod.termination_message()
        await self.api.patch_status(Api.path("v1", "pods", self.namespace, pod.name), {
            "phase": "Succeeded" if code == 0 else "Failed", "conditions": list(pod.conditions),
            "containerStatuses": [{"name": self.container["name"], "ready": False, "restartCount": 0,
                                   "state": {"terminated": terminated}}]})

    async def stop(self, pod: PodRun, process: asyncio.subprocess.Process) -> None:
        """The Job failed: terminate a still-running pod (SIGTERM, then SIGKILL) and delete it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE_S)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        code = process.returncode or 0
        pod.exit_code, pod.killed = (128 - code if code < 0 else code), True
        await self.api.delete(Api.path("v1", "pods", self.namespace, pod.name))

    def signal_pod(self, index: int, sig: signal.Signals) -> None:
        """Send ``sig`` to rank ``index``'s process group (a fault)."""
        process = self.processes[self.pods[index].name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)

    def failure_rule(self, pod: PodRun) -> tuple[int, str] | None:
        """The first podFailurePolicy rule matching failed ``pod``: (index, action), or None."""
        for index, rule in enumerate(self.rules):
            codes = rule.get("onExitCodes")
            if codes is not None:
                if codes.get("containerName") not in (None, self.container["name"]):
                    continue
                listed = pod.exit_code in codes["values"]
                if listed == (codes["operator"] == "In"):
                    return index, rule["action"]
            for pattern in rule.get("onPodConditions") or []:
                if any(c.get("type") == pattern["type"] and c.get("status") == pattern["status"]
                       for c in pod.conditions):
                    return index, rule["action"]
        return None

    async def run(self, faults: Callable[[IndexedJobRunner], Awaitable[None]] | None = None) -> JobRun:
        """Start every index, follow the pods, and write the Job's status the way the controller does.

        Terminal states take two status writes, as in Kubernetes 1.31+: ``SuccessCriteriaMet`` (with
        the last count) then ``Complete``; ``FailureTarget`` then, once the other pods are terminated
        and deleted, ``Failed``. Observers must already treat the first one as the outcome.
        """
        master_port = free_port()
        self.pods = pods = [await self.prepare_pod(index, master_port) for index in range(self.completions)]
        self.processes = processes = {pod.name: await self.start(pod) for pod in pods}
        await self.api.patch_status(self.job_path, {"active": len(pods), "ready": len(pods), "startTime": now_iso()})
        waits = {asyncio.ensure_future(processes[pod.name].wait()): pod for pod in pods}
        fault = asyncio.ensure_future(faults(self)) if faults is not None else None
        succeeded: list[int] = []
        failed: list[PodRun] = []
        target: dict[str, str] = {}  # FailureTarget or SuccessCriteriaMet, once reached
        deadline = asyncio.get_running_loop().time() + self.node.pod_timeout_s
        try:
            while waits and not failed:
                timeout = deadline - asyncio.get_running_loop().time()
                done, _ = await asyncio.wait(waits, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise KubeletError(f"Job {self.name}: pods still running after {self.node.pod_timeout_s:.0f}s"
                                       f"\n{JobRun(self.name, False, pods).describe()}")
                for future in sorted(done, key=lambda f: waits[f].index):
                    pod = waits.pop(future)
                    await self.record_exit(pod, future.result())
                    if pod.exit_code == 0:
                        succeeded.append(pod.index)
                    else:
                        failed.append(pod)
                counts: dict[str, Any] = {"active": len(waits), "ready": len(waits), "succeeded": len(succeeded),
                                          "failed": len(failed), "completedIndexes": index_ranges(succeeded)}
                if failed:
                    target = self.failure_target(failed[0], pods)
                    counts["terminating"] = len(waits)
                elif not waits:
                    target = job_condition("SuccessCriteriaMet", "CompletionsReached",
                                           "Reached expected number of succeeded pods")
                if target:
                    counts["conditions"] = [target]
                await self.api.patch_status(self.job_path, counts)
        finally:
            if fault is not None:
                fault.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fault
            for future, pod in waits.items():
                if future.done():  # it ended on its own at the same moment: keep its own exit
                    await self.record_exit(pod, future.result())
                else:
                    await self.stop(pod, processes[pod.name])
                    future.cancel()
        if failed:
            outcome = job_condition("Failed", target["reason"], target["message"])
            await self.api.patch_status(self.job_path, {
                "active": 0, "ready": 0, "terminating": 0,
                "failed": sum(1 for pod in pods if pod.exit_code and not pod.killed), "conditions": [target, outcome]})
            return JobRun(self.name, False, pods)
        outcome = job_condition("Complete", target["reason"], target["message"])
        await self.api.patch_status(self.job_path, {"completionTime": outcome["lastTransitionTime"],
                                                    "conditions": [target, outcome]})
        return JobRun(self.name, True, pods)

    def failure_target(self, pod: PodRun, pods: Sequence[PodRun]) -> dict[str, str]:
        """The Job's FailureTarget condition after ``pod`` failed (pod failure policy, then backoffLimit)."""
        matched = self.failure_rule(pod)
        if matched is not None and matched[1] == "FailJob":
            index = matched[0]
            rule = self.rules[index]
            what = (f"Container {self.container['name']} for pod {self.namespace}/{pod.name} failed with exit code "
                    f"{pod.exit_code}" if "onExitCodes" in rule else
                    f"Pod {self.namespace}/{pod.name} has condition {rule['onPodConditions'][0]['type']}")
            return job_condition("FailureTarget", "PodFailurePolicy", f"{what} matching FailJob rule at index {index}")
        if matched is not None and matched[1] != "Count":
            raise KubeletError(f"Job {self.name}: pod failure policy action {matched[1]} (a replacement pod) is not "
                               f"emulated\n{JobRun(self.name, False, list(pods)).describe()}")
        if self.backoff_limit > 0:
            raise KubeletError(f"Job {self.name}: pod {pod.name} failed and backoffLimit is {self.backoff_limit}; "
                               f"retries are not emulated (use backoffLimit: 0)\n"
                               f"{JobRun(self.name, False, list(pods)).describe()}")
        return job_condition("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit")


def job_condition(type_: str, reason: str, message: str) -> dict[str, str]:
    now = now_iso()
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastProbeTime": now,
            "lastTransitionTime": now}


def index_ranges(indexes: Sequence[int]) -> str:
    """``completedIndexes`` as Kubernetes writes it: sorted, three or more consecutive as ``a-b`` (``0,1,3-5``)."""
    runs: list[list[int]] = []
    for index in sorted(set(indexes)):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(a) if a == b else f"{a},{b}" if b == a + 1 else f"{a}-{b}" for a, b in runs)


async def run_indexed_job(node: FakeNode, namespace: str, name: str, *, wait_s: float = 20.0,
                          faults: Callable[[IndexedJobRunner], Awaitable[None]] | None = None) -> JobRun:
    """Wait (up to ``wait_s``) for Job ``namespace/name`` in the API, run its pods to the end, return how."""
    async with aiohttp.ClientSession() as session:
        api = Api(node.api_url, session)
        deadline = asyncio.get_running_loop().time() + wait_s
        while (job := await api.get(Api.path("batch/v1", "jobs", namespace, name))) is None:
            if asyncio.get_running_loop().time() > deadline:
                raise KubeletError(f"Job {namespace}/{name} did not appear within {wait_s:.0f}s")
            await asyncio.sleep(0.2)
        return await IndexedJobRunner(node, api, namespace, job).run(faults)
