"""The fake kubelet's own rules: how container paths, fieldRefs and completed indexes are rendered."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubelet import (
    FakeNode,
    IndexedJobRunner,
    KubeletError,
    PodRun,
    container_env,
    index_ranges,
    localize,
)

MOUNTS = [("/mnt/model", Path("/local/models")), ("/mnt/model/calib", Path("/local/calib")),
          ("/tmp", Path("/local/scratch"))]


@pytest.mark.parametrize(("value", "expected"), [
    ("/mnt/model/Qwen2-7B", "/local/models/Qwen2-7B"),
    ("/mnt/model", "/local/models"),
    ("/mnt/model/calib/x.jsonl", "/local/calib/x.jsonl"),  # the longest mount path wins
    ("/mnt/models/other", "/mnt/models/other"),  # a prefix that is not a path component is left alone
    ("/tmp", "/local/scratch"),
    ("cpu", "cpu"),
])
def test_localize(value: str, expected: str) -> None:
    assert localize(value, MOUNTS) == expected


def test_container_env_resolves_values_and_field_refs() -> None:
    container = {"env": [
        {"name": "HOME", "value": "/tmp"},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]}
    env = container_env(container, MOUNTS, namespace="ml", pod_name="p-0", labels={})
    assert env == {"HOME": "/local/scratch", "NS": "ml", "IP": "127.0.0.1"}
    with pytest.raises(KubeletError, match="SECRET"):
        container_env({"env": [{"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
                      MOUNTS, namespace="ml", pod_name="p-0", labels={})


def test_index_ranges_as_kubernetes_writes_them() -> None:
    assert index_ranges([]) == ""
    assert index_ranges([1, 0]) == "0,1"  # runs of two stay apart (batch/v1 JobStatus docs)
    assert index_ranges([0, 1, 2]) == "0-2"
    assert index_ranges([0, 2, 3, 4, 7]) == "0,2-4,7"


def _runner(rules: list[dict], backoff_limit: int = 0) -> IndexedJobRunner:
    job = {"metadata": {"name": "j-a1"}, "spec": {
        "completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": backoff_limit,
        "podFailurePolicy": {"rules": rules},
        "template": {"spec": {"containers": [{"name": "worker", "args": ["quantize"]}]}}}}
    node = FakeNode(api_url="http://unused", claims={}, workdir=Path("/nonexistent"))
    return IndexedJobRunner(node, None, "ml", job)  # type: ignore[arg-type]


def _pod(code: int, conditions: list[dict] | None = None) -> PodRun:
    return PodRun(1, "j-a1-1-x", [], {}, Path("/nonexistent"), exit_code=code, conditions=conditions or [])


def test_pod_failure_policy_as_the_job_controller_applies_it() -> None:
    from quantjob.operator.builders import pod_failure_policy

    runner = _runner(pod_failure_policy()["rules"])
    user = runner.failure_target(_pod(3), [])
    assert user["reason"] == "PodFailurePolicy"
    assert user["message"] == ("Container worker for pod ml/j-a1-1-x failed with exit code 3 matching FailJob rule "
                               "at index 0")
    evicted = runner.failure_target(_pod(143, [{"type": "DisruptionTarget", "status": "True"}]), [])
    assert evicted["message"] == "Pod ml/j-a1-1-x has condition DisruptionTarget matching FailJob rule at index 1"
    assert runner.failure_target(_pod(137), [])["message"].endswith("exit code 137 matching FailJob rule at index 2")
    plain = _runner([])
    assert plain.failure_target(_pod(1), [])["reason"] == "BackoffLimitExceeded"  # backoffLimit 0, no rule
    with pytest.raises(KubeletError, match="retries are not emulated"):
        _runner([], backoff_limit=3).failure_target(_pod(1), [])
    with pytest.raises(KubeletError, match="Ignore"):
        _runner([{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]}}]).failure_target(_pod(1), [])


def test_args_run_through_the_image_entry_point() -> None:
    runner = _runner([])
    assert runner.argv([]) == ["bash", str(Path(__file__).resolve().parents[2] / "docker" / "worker-entrypoint.sh"),
                               "quantize"]
