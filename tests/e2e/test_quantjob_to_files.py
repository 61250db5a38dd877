"""From a QuantJob to quantized files: the real operator (kopf) against kmock over HTTP, the Jobs it
creates run by a fake kubelet (``kubelet.py``) as one local process per rank, the worker's rank 0
writing its progress ConfigMap over HTTPS as in a cluster, and each attempt's end followed by the
operator: a second attempt of the whole group after a lost rank, a user error failing at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import kmock as kmocklib
import pytest
from emulator import NAMESPACE, QUANTJOBS, eventually, quantjob_manifest, stored
from kubelet import FakeNode, IndexedJobRunner, JobRun, apply, run_indexed_job

from quantjob.worker.model.demo import build_demo_model, write_calibration_jsonl
from quantjob.worker.savers.assemble import COMPLETE, verify_complete

pytestmark = [pytest.mark.slow, pytest.mark.asyncio, pytest.mark.timeout(240)]

NAME = "tiny-w8a8"
SAMPLES, MAX_LENGTH = 4, 32
OUTPUT = "tiny-llama-w8a8"


def tiny_quantjob(**spec: Any) -> dict[str, Any]:
    return quantjob_manifest(
        NAME, uid="uid-e2e", model={"pvc": "models", "path": "tiny-llama"},
        output={"pvc": "quantized", "path": OUTPUT}, devices={"type": "cpu", "count": 2},
        calibration={"path": "calib/tiny.jsonl", "samples": SAMPLES, "maxLength": MAX_LENGTH}, **spec)


def put_model(node: FakeNode, layers: int = 2) -> Path:
    """The tiny model and its calibration file on the ``models`` PVC."""
    model = build_demo_model(node.claims["models"] / "tiny-llama", family="llama", num_layers=layers,
                             hidden_size=64, intermediate_size=128)
    write_calibration_jsonl(node.claims["models"] / "calib" / "tiny.jsonl", SAMPLES)
    return model


def quantjob_status(cluster: kmocklib.KubernetesEmulator) -> dict[str, Any]:
    return dict((stored(cluster, QUANTJOBS, NAME) or {}).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def patches(cluster: kmocklib.KubernetesEmulator, resource: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    """(User-Agent, body) of every PATCH to ``resource/name``, in order."""
    return [(str(request.headers.get("User-Agent", "")), dict(request.data or {})) for request in cluster
            if request.method == "PATCH" and request.resource == kmocklib.resource(resource) and request.name == name]


def statuses_written(cluster: kmocklib.KubernetesEmulator) -> list[dict[str, Any]]:
    return [body.get("status") or {} for _, body in patches(cluster, QUANTJOBS, NAME)]


def phases_written(cluster: kmocklib.KubernetesEmulator) -> list[str]:
    return [status["phase"] for status in statuses_written(cluster) if "phase" in status]


PHASE_ORDER = {"Pending": 0, "Running": 1, "Succeeded": 2, "Failed": 2}


async def finished(cluster: kmocklib.KubernetesEmulator, phase: str, *runs: JobRun) -> dict[str, Any]:
    try:
        return dict(await eventually(lambda: quantjob_status(cluster).get("phase") == phase
                                     and quantjob_status(cluster), timeout=20))
    except AssertionError as error:
        raise AssertionError(f"{error}\nstatus: {quantjob_status(cluster)}\n"
                             + "\n".join(run.describe() for run in runs)) from None


async def quantize_one_rank(model: Path, calib: Path, out: Path) -> None:
    """The same quantization as one local process (the reference for byte identity)."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "quantjob"), "quantize", "--model_path", str(model),
        "--save_path", str(out), "--device", "cpu", "--quant_type", "w8a8", "--calib_file", str(calib),
        "--calib_samples", str(SAMPLES), "--max_length", str(MAX_LENGTH),
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, (stdout + stderr).decode(errors="replace")


async def assert_identical_to_one_process(node: FakeNode, model: Path, reference: Path) -> None:
    out = node.claims["quantized"] / OUTPUT
    for name in ("quant_model_description.json", "quant_model_weights.safetensors", COMPLETE):
        assert (out / name).is_file(), sorted(p.name for p in out.iterdir())
    assert verify_complete(out) is None
    await quantize_one_rank(model, node.claims["models"] / "calib" / "tiny.jsonl", reference)
    for name in ("quant_model_description.json", "quant_model_weights.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


async def test_quantjob_runs_to_quantized_files(cluster: kmocklib.KubernetesEmulator, start_operator: Any,
                                                node: FakeNode, tmp_path: Path) -> None:
    model = put_model(node)
    async with start_operator():
        await apply(node, tiny_quantjob())
        run = await run_indexed_job(node, NAMESPACE, f"{NAME}-a1")
        assert run.succeeded, run.describe()
        status = await finished(cluster, "Succeeded", run)
        await eventually(lambda: (quantjob_status(cluster).get("progress") or {}).get("layersDone") == 2)
        status = quantjob_status(cluster)

    # the pods: one per rank, the operator's args through the image's entry point, as the worker CLI takes them
    assert [pod.index for pod in run.pods] == [0, 1]
    assert all(pod.command[:2] == ["bash", str(Path(__file__).resolve().parents[2] / "docker" /
                                                 "worker-entrypoint.sh")] for pod in run.pods)
    assert all(pod.env["WORLD_SIZE"] == "2" and pod.env["QUANTJOB_NAME"] == NAME
               and pod.env["QUANTJOB_NAMESPACE"] == NAMESPACE and pod.env["HF_HUB_OFFLINE"] == "1"
               for pod in run.pods)
    assert "rank 1 of 2 joined the process group" in run.pods[1].stderr.read_text()

    # the files: a complete ascendv1 output, byte-identical to one local process (the ranks shared stats)
    await assert_identical_to_one_process(node, model, tmp_path / "reference")
    description = json.loads((node.claims["quantized"] / OUTPUT / "quant_model_description.json").read_text())
    assert description["model_quant_type"] == "W8A8"

    # the QuantJob: Succeeded after one attempt, the worker's progress mirrored
    assert status["runner"] == "dp_layer_wise" and status["worldSize"] == 2 and status["attempt"] == 1
    assert condition(status, "Valid")["status"] == "True"
    assert condition(status, "Complete")["status"] == "True" and condition(status, "Running")["status"] == "False"
    assert condition(status, "Failed")["status"] == "False"
    assert status["startTime"] and status["completionTime"]
    assert status["progress"]["layersDone"] == status["progress"]["layersTotal"] == 2
    assert status["attempts"][0]["outcome"] == "Succeeded" and status["attempts"][0]["resumedFromLayer"] == 0

    # progress came from rank 0 over HTTPS into its ConfigMap (urllib); the QuantJob only from the operator
    reports = patches(cluster, "v1/configmaps", f"{NAME}-progress")
    assert reports and all(agent.startswith("Python-urllib") for agent, _ in reports)
    assert not [agent for agent, _ in patches(cluster, QUANTJOBS, NAME) if agent.startswith("Python-urllib")]
    done = [json.loads(body["data"]["progress.json"])["layersDone"] for _, body in reports]
    assert done[0] == 0 and done[-1] == 2 and done == sorted(done)
    # Running only once every rank ran (a rank that finished first may leave "1/2" after that), and the
    # phase never stepped back
    running = [s.get("readySummary") for s in statuses_written(cluster) if s.get("phase") == "Running"]
    assert running and running[0] == "2/2" and set(running) <= {"2/2", "1/2"}, running
    phases = phases_written(cluster)
    assert phases[0] == "Pending" and "Running" in phases and phases[-1] == "Succeeded", phases
    assert [PHASE_ORDER[p] for p in phases] == sorted(PHASE_ORDER[p] for p in phases), phases


def committed_layers(staging: Path) -> int:
    count = 0
    while (staging / f"layer-{count:05d}.json").exists():
        count += 1
    return count


async def test_killed_rank_restarts_the_whole_group_which_resumes(cluster: kmocklib.KubernetesEmulator,
                                                                 start_operator: Any, node: FakeNode,
                                                                 tmp_path: Path) -> None:
    layers = 4
    model = put_model(node, layers)
    staging = node.claims["quantized"] / OUTPUT / ".quantjob-staging"
    at_kill: dict[str, int] = {}

    async def kill_rank_1_after_a_commit(runner: IndexedJobRunner) -> None:
        """Freeze the group once a layer is committed, then SIGKILL rank 1 (an OOM kill, a lost node)."""
        while not (staging / "layer-00000.json").exists():
            await asyncio.sleep(0.005)
        for index in range(len(runner.pods)):
            runner.signal_pod(index, signal.SIGSTOP)
        at_kill["committed"] = committed_layers(staging)
        runner.signal_pod(1, signal.SIGKILL)
        runner.signal_pod(0, signal.SIGCONT)

    async with start_operator():
        await apply(node, tiny_quantjob())
        first = await run_indexed_job(node, NAMESPACE, f"{NAME}-a1", faults=kill_rank_1_after_a_commit)
        assert not first.succeeded, first.describe()
        assert first.pods[1].exit_code == 128 + signal.SIGKILL, first.describe()
        # rank 0, let go after the kill, may still commit the layer its writer had in flight
        at_restart = committed_layers(staging)
        second = await run_indexed_job(node, NAMESPACE, f"{NAME}-a2", wait_s=30)
        assert second.succeeded, second.describe()
        status = await finished(cluster, "Succeeded", first, second)
        await eventually(lambda: len(quantjob_status(cluster).get("attempts") or []) == 2
                         and quantjob_status(cluster)["attempts"][1].get("resumedFromLayer") is not None)
        status = quantjob_status(cluster)

    assert at_restart >= at_kill["committed"] >= 1
    assert status["attempt"] == 2 and status["restarts"] == 1 and status["restartsCountTowardsMax"] == 1
    one, two = status["attempts"]
    assert one["outcome"] == "Failed" and f"rank 1 (pod {first.pods[1].name}) exited with code 137" in one["message"]
    assert two["resumedFromLayer"] == at_restart  # the new group resumed at the last committed layer
    assert two["outcome"] == "Succeeded" and two["job"] == f"{NAME}-a2"
    # the new attempt's ranks met at a new rendezvous: rank 0 of attempt 2, not of attempt 1
    assert {pod.env["QUANTJOB_ATTEMPT"] for pod in second.pods} == {"2"}
    assert f"resuming at layer {at_restart}" in second.pods[0].stderr.read_text()
    await assert_identical_to_one_process(node, model, tmp_path / "reference")


async def test_user_input_error_fails_after_one_attempt_with_the_workers_message(
        cluster: kmocklib.KubernetesEmulator, start_operator: Any, node: FakeNode) -> None:
    model = put_model(node)
    config = json.loads((model / "config.json").read_text())
    config["vision_config"] = {"hidden_size": 32}  # a vision tower: dp_layer_wise refuses it at the worker
    (model / "config.json").write_text(json.dumps(config))
    async with start_operator():
        await apply(node, tiny_quantjob())
        run = await run_indexed_job(node, NAMESPACE, f"{NAME}-a1")
        status = await finished(cluster, "Failed", run)
        await asyncio.sleep(1.5)  # a few resyncs: no second attempt comes
    assert not run.succeeded and {pod.exit_code for pod in run.pods if not pod.killed} == {2}, run.describe()
    assert status["reason"] == "UserError" and status["attempt"] == 1 and status["restarts"] == 0
    assert "multimodal models" in status["message"] and status["message"].startswith("rank ")
    assert condition(status, "Failed")["message"] == status["message"]
    assert stored(cluster, "batch/v1/jobs", f"{NAME}-a2") is None


async def test_max_restarts_exhausted_ends_failed_with_the_count(cluster: kmocklib.KubernetesEmulator,
                                                                start_operator: Any, node: FakeNode) -> None:
    put_model(node)

    async def kill_rank_1(runner: IndexedJobRunner) -> None:
        runner.signal_pod(1, signal.SIGKILL)

    async with start_operator():
        await apply(node, tiny_quantjob(maxRestarts=1))
        runs = [await run_indexed_job(node, NAMESPACE, f"{NAME}-a1", faults=kill_rank_1)]
        runs.append(await run_indexed_job(node, NAMESPACE, f"{NAME}-a2", faults=kill_rank_1, wait_s=30))
        status = await finished(cluster, "Failed", *runs)
        await asyncio.sleep(1.5)
    assert status["reason"] == "RestartsExhausted" and status["attempt"] == 2
    assert "after 1 restart(s) (maxRestarts 1)" in status["message"] and "code 137" in status["message"]
    assert [a["outcome"] for a in status["attempts"]] == ["Failed", "Failed"]
    assert stored(cluster, "batch/v1/jobs", f"{NAME}-a3") is None
    assert not (node.claims["quantized"] / OUTPUT / COMPLETE).exists()
