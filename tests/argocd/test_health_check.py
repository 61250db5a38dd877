"""docs/argocd/quantjob-health.lua, run in Lua 5.1 (the dialect of Argo CD's gopher-lua) on the
statuses the operator and the worker write, built with their own functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from quantjob.api.problems import Problem
from quantjob.operator.review import review_quantjob
from quantjob.operator.status import accepted_status, invalid_status, mirror_job
from quantjob.worker.progress_k8s import KubernetesProgress

lupa = pytest.importorskip("lupa.lua51")  # lupa is in the dev extra; lua51 ships in its wheels

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "argocd" / "quantjob-health.lua"
PATCH = ROOT / "docs" / "argocd" / "argocd-cm-patch.yaml"
NOW = "2026-01-01T00:00:00Z"
EXAMPLE = yaml.safe_load((ROOT / "examples" / "quantjobs" / "qwen2-7b-w8a8-npu4.yaml").read_text(encoding="utf-8"))


def health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Run the script as Argo CD does: ``obj`` is a global, the chunk returns ``hs``."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script if script is not None else SCRIPT.read_text(encoding="utf-8"))
    return {key: result[key] for key in ("status", "message")}


def quantjob(status: dict[str, Any] | None) -> dict[str, Any]:
    body = dict(EXAMPLE)
    if status is not None:
        body["status"] = status
    return body


class RecordedProgress(KubernetesProgress):
    """Rank 0's progress reporter, with the patches kept instead of sent."""

    def __init__(self) -> None:
        super().__init__("qwen2-7b-w8a8", "ml", "https://api.invalid", min_interval=0.0)
        self.sent: dict[str, Any] = {}

    def _patch(self, progress: dict[str, Any]) -> None:
        self.sent.update(progress)


def accepted() -> dict[str, Any]:
    resolution = review_quantjob(EXAMPLE)
    assert resolution.ok
    return accepted_status(resolution, "qwen2-7b-w8a8", {}, NOW)


def mirrored(previous: dict[str, Any], job_status: dict[str, Any], pod_message: str | None = None) -> dict[str, Any]:
    return {**previous, **mirror_job(job_status, 4, previous, pod_message, NOW)}


def test_argocd_cm_patch_carries_the_script_verbatim() -> None:
    data = yaml.safe_load(PATCH.read_text(encoding="utf-8"))["data"]
    assert data == {"resource.customizations.health.quantjob.io_QuantJob": SCRIPT.read_text(encoding="utf-8")}


def test_new_quantjob_without_status_is_progressing() -> None:
    assert health(quantjob(None))["status"] == "Progressing"
    assert health(quantjob({}))["status"] == "Progressing"


def test_accepted_and_pending_is_progressing() -> None:
    status = accepted()
    assert status["phase"] == "Pending"
    assert health(quantjob(status)) == {"status": "Progressing", "message": "waiting for the worker pods on 4 device(s)"}


def test_queued_job_is_progressing() -> None:
    status = mirrored(accepted(), {"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]})
    assert status["phase"] == "Pending"
    assert health(quantjob(status)) == {"status": "Progressing",
                                        "message": "queued: the Job is suspended until its queue admits it"}


def test_running_reports_the_worker_progress() -> None:
    status = mirrored(accepted(), {"active": 4, "startTime": NOW})
    assert status["phase"] == "Running"
    progress = RecordedProgress()
    progress.start(28)
    progress.layer_done(7, 28, 0.01)
    status["progress"] = progress.sent
    assert health(quantjob(status)) == {"status": "Progressing", "message": "quantizing (7 of 28 layers)"}


def test_succeeded_is_healthy() -> None:
    running = mirrored(accepted(), {"active": 4, "startTime": NOW})
    status = mirrored(running, {"succeeded": 4, "startTime": NOW, "completionTime": NOW,
                                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                               {"type": "Complete", "status": "True"}]})
    assert status["phase"] == "Succeeded"
    progress = RecordedProgress()
    progress.start(28)
    progress.layer_done(28, 28)
    status["progress"] = progress.sent
    assert health(quantjob(status)) == {"status": "Healthy", "message": "quantized model complete (28 of 28 layers)"}


def test_failed_worker_is_degraded_with_the_rank_message() -> None:
    running = mirrored(accepted(), {"active": 4, "startTime": NOW})
    failure = "rank 1 (pod qwen2-7b-w8a8-1-x) exited with code 3: model.safetensors is corrupt"
    status = mirrored(running, {"failed": 1, "startTime": NOW, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}, failure)
    assert status["phase"] == "Failed"
    assert health(quantjob(status)) == {"status": "Degraded", "message": failure}


def test_invalid_quantjob_is_degraded_with_the_problem() -> None:
    problem = Problem("spec.devices.count", "must be at least 1")
    status = invalid_status([problem], {}, NOW)
    assert health(quantjob(status)) == {"status": "Degraded", "message": str(problem)}


@pytest.mark.parametrize("status, generation, expected", [
    # fields the operator writes beside phase: observedGeneration, reason and message
    ({"phase": "Succeeded", "observedGeneration": 1}, 2,
     {"status": "Progressing", "message": "waiting for the operator to see generation 2"}),
    ({"phase": "Pending", "reason": "Unschedulable", "message": "0/3 nodes have huawei.com/Ascend910"}, 1,
     {"status": "Progressing", "message": "pending (Unschedulable): 0/3 nodes have huawei.com/Ascend910"}),
    ({"phase": "Failed", "reason": "UserError", "message": "rank 0: config.json is missing"}, 1,
     {"status": "Degraded", "message": "rank 0: config.json is missing"}),
])
def test_reason_message_and_generation(status: dict[str, Any], generation: int, expected: dict[str, str]) -> None:
    body = quantjob(status)
    body["metadata"] = {**body["metadata"], "generation": generation}
    assert health(body) == expected


def test_a_lua_error_in_the_script_fails_here() -> None:
    broken = SCRIPT.read_text(encoding="utf-8").replace("ipairs(", "ipairz(")
    status = invalid_status([Problem("spec.devices.count", "must be at least 1")], {}, NOW)
    with pytest.raises(lupa.LuaError):
        health(quantjob(status), broken)
