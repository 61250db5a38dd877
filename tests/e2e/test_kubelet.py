"""The fake kubelet's own rules: how container paths, fieldRefs and completed indexes are rendered."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubelet import KubeletError, container_env, index_ranges, localize

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
