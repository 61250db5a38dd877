"""From a QuantJob to quantized files: the real operator (kopf) against kmock over HTTP, the Job it
creates run by a fake kubelet (``kubelet.py``) as one local process per rank, the worker's rank 0
patching ``status.progress`` through the API, and the Job's end mirrored into the QuantJob.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import kmock as kmocklib
import pytest
from emulator import NAMESPACE, QUANTJOBS, eventually, quantjob_manifest, stored
from kubelet import FakeNode, JobRun, apply, run_indexed_job

from quantjob.api import exit_codes
from quantjob.worker.demo import build_demo_model, write_calibration_jsonl
from quantjob.worker.savers.assemble import COMPLETE, verify_complete

pytestmark = [pytest.mark.slow, pytest.mark.asyncio, pytest.mark.timeout(120)]

NAME = "tiny-w8a8"
LAYERS = 2
SAMPLES, MAX_LENGTH = 4, 32


def tiny_quantjob(**spec: Any) -> dict[str, Any]:
    return quantjob_manifest(
        NAME, uid="uid-e2e", model={"pvc": "models", "path": "tiny-llama"},
        output={"pvc": "quantized", "path": "tiny-llama-w8a8"}, devices={"type": "cpu", "count": 2},
        calibration={"path": "calib/tiny.jsonl", "samples": SAMPLES, "maxLength": MAX_LENGTH}, **spec)


def put_model(node: FakeNode) -> Path:
    """The tiny model and its calibration file on the ``models`` PVC."""
    model = build_demo_model(node.claims["models"] / "tiny-llama", family="llama", num_layers=LAYERS,
                             hidden_size=64, intermediate_size=128)
    write_calibration_jsonl(node.claims["models"] / "calib" / "tiny.jsonl", SAMPLES)
    return model


def quantjob_status(cluster: kmocklib.KubernetesEmulator) -> dict[str, Any]:
    return dict((stored(cluster, QUANTJOBS, NAME) or {}).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def status_patches(cluster: kmocklib.KubernetesEmulator) -> list[tuple[str, dict[str, Any]]]:
    """(User-Agent, status body) of every PATCH to our QuantJob, in order."""
    return [(str(request.headers.get("User-Agent", "")), dict((request.data or {}).get("status") or {}))
            for request in cluster
            if request.method == "PATCH" and request.resource == kmocklib.resource(QUANTJOBS)
            and request.name == NAME]


PHASE_ORDER = {"Pending": 0, "Running": 1, "Succeeded": 2, "Failed": 2}


def phases_written(cluster: kmocklib.KubernetesEmulator) -> list[str]:
    """Every phase the operator wrote, in order (it must never step back, e.g. Running -> Pending)."""
    return [body["phase"] for _, body in status_patches(cluster) if "phase" in body]


async def finished(cluster: kmocklib.KubernetesEmulator, phase: str, run: JobRun) -> dict[str, Any]:
    try:
        return dict(await eventually(lambda: quantjob_status(cluster).get("phase") == phase
                                     and quantjob_status(cluster), timeout=15))
    except AssertionError as error:
        raise AssertionError(f"{error}\nstatus: {quantjob_status(cluster)}\n{run.describe()}") from None


async def quantize_one_rank(model: Path, calib: Path, out: Path) -> None:
    """The same quantization as one local process (the reference for byte identity)."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "quantjob"), "quantize", "--model_path", str(model),
        "--save_path", str(out), "--device", "cpu", "--quant_type", "w8a8", "--calib_file", str(calib),
        "--calib_samples", str(SAMPLES), "--max_length", str(MAX_LENGTH),
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, (stdout + stderr).decode(errors="replace")


async def test_quantjob_runs_to_quantized_files(cluster: kmocklib.KubernetesEmulator, start_operator: Any,
                                                node: FakeNode, tmp_path: Path) -> None:
    model = put_model(node)
    async with start_operator():
        await apply(node, tiny_quantjob())
        run = await run_indexed_job(node, NAMESPACE, NAME)
        assert run.succeeded, run.describe()
        status = await finished(cluster, "Succeeded", run)

    # the pods: one per rank, the operator's command and env as the worker CLI takes them
    assert [pod.index for pod in run.pods] == [0, 1]
    assert all(pod.env["WORLD_SIZE"] == "2" and pod.env["QUANTJOB_NAME"] == NAME
               and pod.env["QUANTJOB_NAMESPACE"] == NAMESPACE for pod in run.pods)
    assert "rank 1 of 2 joined the process group" in run.pods[1].stderr.read_text()

    # the files: a complete ascendv1 output whose marker's checksums match
    out = node.claims["quantized"] / "tiny-llama-w8a8"
    for name in ("quant_model_description.json", "quant_model_weights.safetensors", COMPLETE):
        assert (out / name).is_file(), sorted(p.name for p in out.iterdir())
    assert verify_complete(out) is None
    description = json.loads((out / "quant_model_description.json").read_text())
    assert description["model_quant_type"] == "W8A8"

    # ... byte-identical to one local process quantizing the same model (the ranks really shared stats)
    reference = tmp_path / "reference"
    await quantize_one_rank(model, node.claims["models"] / "calib" / "tiny.jsonl", reference)
    for name in ("quant_model_description.json", "quant_model_weights.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name

    # the QuantJob: Succeeded with the operator's conditions, the worker's progress at the end
    assert status["runner"] == "dp_layer_wise" and status["worldSize"] == 2
    assert condition(status, "Valid")["status"] == "True"
    assert condition(status, "Complete")["status"] == "True" and condition(status, "Running")["status"] == "False"
    assert condition(status, "Failed")["status"] == "False"
    assert status["startTime"] and status["completionTime"]
    assert status["progress"]["layersDone"] == status["progress"]["layersTotal"] == LAYERS

    # progress came from rank 0 over HTTP (urllib), and nothing else ever wrote it
    patches = status_patches(cluster)
    progress = [body["progress"] for agent, body in patches if "progress" in body]
    assert progress and all(agent.startswith("Python-urllib") for agent, body in patches if "progress" in body)
    assert all(set(body) == {"progress"} for agent, body in patches if agent.startswith("Python-urllib"))
    assert progress[0]["layersDone"] == 0 and progress[-1]["layersDone"] == LAYERS
    phases = phases_written(cluster)
    assert phases[0] == "Pending" and "Running" in phases and phases[-1] == "Succeeded", phases
    assert [PHASE_ORDER[p] for p in phases] == sorted(PHASE_ORDER[p] for p in phases), phases
    # every stored version after the first progress patch still holds it, never moving backwards
    versions = [dict(v.get("status") or {}).get("progress") for v in cluster.objects[
        kmocklib.resource(QUANTJOBS), NAMESPACE, NAME].history if v is not None]
    first = next(i for i, p in enumerate(versions) if p)
    done = [p["layersDone"] for p in versions[first:] if p]
    assert len(done) == len(versions) - first and done == sorted(done), versions


async def test_worker_failure_fails_the_quantjob_with_its_error(cluster: kmocklib.KubernetesEmulator,
                                                                start_operator: Any, node: FakeNode) -> None:
    model = put_model(node)
    weights = model / "model.safetensors"
    weights.write_bytes(b"\x00garbage" + weights.read_bytes()[8:])  # the header length is now nonsense
    async with start_operator():
        await apply(node, tiny_quantjob(backoffLimit=0))
        run = await run_indexed_job(node, NAMESPACE, NAME)
        assert not run.succeeded, run.describe()
        status = await finished(cluster, "Failed", run)

    failed_pods = [pod for pod in run.pods if not pod.killed and pod.exit_code]
    assert failed_pods and all(pod.exit_code == exit_codes.INPUT for pod in failed_pods), run.describe()
    first = min(failed_pods, key=lambda pod: pod.index)
    error = first.termination_message()
    assert error.startswith("quantjob: error: ") and str(weights) in error, run.describe()

    failed = condition(status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert failed["message"] == f"rank {first.index} (pod {first.name}) exited with code 1: {error}"
    assert condition(status, "Complete")["status"] == "False"
    phases = phases_written(cluster)
    assert phases[-1] == "Failed" and [PHASE_ORDER[p] for p in phases] == sorted(PHASE_ORDER[p] for p in phases)
    assert not (node.claims["quantized"] / "tiny-llama-w8a8" / COMPLETE).exists()
