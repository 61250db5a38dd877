"""docs/argocd/quantjob-health.lua, run in Lua 5.1 (the dialect of Argo CD's gopher-lua) on the
statuses the operator writes, built with its own functions (``lifecycle.decide`` on observed Jobs and
pods, ``status.invalid_status``) and the progress the worker reports (``KubernetesProgress``)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from quantjob.api.problems import Problem
from quantjob.operator.lifecycle import decide
from quantjob.operator.observation import Limits, Observed
from quantjob.operator.status import invalid_status
from quantjob.worker.progress_k8s import PROGRESS_KEY, KubernetesProgress

lupa = pytest.importorskip("lupa.lua51")  # lupa is in the dev extra; lua51 ships in its wheels

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "argocd" / "quantjob-health.lua"
PATCH = ROOT / "docs" / "argocd" / "argocd-cm-patch.yaml"
NOW = "2026-01-01T00:00:00Z"
NAME = "qwen2-7b-w8a8"
LIMITS = Limits(world_size=4, max_restarts=3, max_disruptions=10, startup_timeout_s=3600, active_deadline_s=0)
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
    """Rank 0's progress reporter, with its ConfigMap patches kept instead of sent."""

    def __init__(self, tmp: Path) -> None:
        (tmp / "token").write_text("token")
        super().__init__(f"{NAME}-progress", "ml", "https://api.invalid", token_file=tmp / "token",
                         ca_file=Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"),
                         min_interval=0.0)
        self.config_map: dict[str, Any] = {}

    def _patch(self) -> None:
        self.config_map = {"data": {PROGRESS_KEY: json.dumps(self.state, sort_keys=True)}}


def step(status: dict[str, Any], job: dict[str, Any] | None = None, progress: dict[str, Any] | None = None,
         pods: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One reconcile: the operator's decision merged into the QuantJob's status (a merge patch)."""
    observed = Observed(name=NAME, status=status, limits=LIMITS, now=NOW, job=job, pods=pods or [],
                        progress=progress)
    return {**status, **decide(observed).status}


def job(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": f"{NAME}-a1"}, "spec": {"completions": 4}, "status": status}


def progress_of(reporter: RecordedProgress) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(reporter.config_map["data"][PROGRESS_KEY])
    return parsed


def test_argocd_cm_patch_carries_the_script_verbatim() -> None:
    data = yaml.safe_load(PATCH.read_text(encoding="utf-8"))["data"]
    assert data == {"resource.customizations.health.quantjob.io_QuantJob": SCRIPT.read_text(encoding="utf-8")}


def test_new_quantjob_without_status_is_progressing() -> None:
    assert health(quantjob(None))["status"] == "Progressing"
    assert health(quantjob({}))["status"] == "Progressing"


def test_creating_the_first_attempt_is_progressing() -> None:
    status = step({})
    assert (status["phase"], status["reason"]) == ("Pending", "Creating")
    assert health(quantjob(status)) == {"status": "Progressing", "message": f"pending (Creating): {status['message']}"}


def test_queued_job_is_progressing() -> None:
    status = step(step({}), job({"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}))
    assert (status["phase"], status["reason"]) == ("Pending", "Suspended")
    assert health(quantjob(status))["status"] == "Progressing"
    assert "queue" in health(quantjob(status))["message"]


def test_unschedulable_ranks_show_why() -> None:
    pod = {"metadata": {"name": f"{NAME}-a1-0", "labels": {"batch.kubernetes.io/job-completion-index": "0"}},
           "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                          "reason": "Unschedulable",
                                                          "message": "0/3 nodes have huawei.com/Ascend910"}]}}
    status = step(step({}), job({"active": 4, "ready": 0, "startTime": NOW}), pods=[pod])
    assert (status["phase"], status["reason"]) == ("Pending", "Unschedulable")
    result = health(quantjob(status))
    assert result["status"] == "Progressing" and result["message"].startswith("pending (Unschedulable): ")
    assert "0/3 nodes" in result["message"]


def test_running_reports_the_worker_progress(tmp_path: Path) -> None:
    reporter = RecordedProgress(tmp_path)
    reporter.start(28)
    reporter.layer_done(7, 28, 0.01)
    status = step(step({}), job({"active": 4, "ready": 4, "startTime": NOW}), progress_of(reporter))
    assert status["phase"] == "Running"
    assert health(quantjob(status)) == {"status": "Progressing", "message": "quantizing (7 of 28 layers)"}


def test_succeeded_is_healthy(tmp_path: Path) -> None:
    reporter = RecordedProgress(tmp_path)
    reporter.start(28)
    reporter.layer_done(28, 28)
    running = step(step({}), job({"active": 4, "ready": 4, "startTime": NOW}))
    status = step(running, job({"succeeded": 4, "startTime": NOW, "completionTime": NOW,
                                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                               {"type": "Complete", "status": "True"}]}), progress_of(reporter))
    assert status["phase"] == "Succeeded"
    assert health(quantjob(status)) == {"status": "Healthy", "message": "quantized model complete (28 of 28 layers)"}


def test_user_error_is_degraded_with_the_rank_message() -> None:
    running = step(step({}), job({"active": 4, "ready": 4, "startTime": NOW}))
    failed_pod = {"metadata": {"name": f"{NAME}-a1-1", "labels": {"batch.kubernetes.io/job-completion-index": "1"}},
                  "status": {"phase": "Failed", "containerStatuses": [{"name": "worker", "state": {"terminated": {
                      "exitCode": 3, "message": "model.safetensors is corrupt"}}}]}}
    status = step(running, job({"failed": 1, "startTime": NOW, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"},
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
         "message": "Container worker for pod ml/qwen2-7b-w8a8-a1-1 failed with exit code 3 matching FailJob rule "
                    "at index 0"}]}), pods=[failed_pod])
    assert (status["phase"], status["reason"]) == ("Failed", "UserError")
    result = health(quantjob(status))
    assert result["status"] == "Degraded" and "model.safetensors is corrupt" in result["message"]


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
