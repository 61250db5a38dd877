"""``spec.devices.perNode`` (Ascend placement) and packing without it (issue 26)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from emulator import quantjob_manifest

from quantjob.operator.admission import evaluate
from quantjob.operator.builders import build_job
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import Settings

SAME_ATTEMPT = {"matchLabels": {"quantjob.io/name": "qwen2-w8a8", "quantjob.io/attempt": "1"}}


def pod_spec(count: int, per_node: int | None = None, **spec: Any) -> dict[str, Any]:
    devices = {"type": "npu", "count": count, **({"perNode": per_node} if per_node else {})}
    resolution = review_quantjob(quantjob_manifest(devices=devices, **spec))
    assert resolution.job is not None, resolution.problems
    job = build_job(resolution.job, resolution, Settings(), "ml")
    kubernetes_validate.validate(job, "1.31", strict=True)
    return dict(job["spec"]["template"]["spec"])


def test_one_rank_per_node_is_a_required_anti_affinity() -> None:
    spec = pod_spec(4, 1)
    assert spec["affinity"] == {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": SAME_ATTEMPT, "topologyKey": "kubernetes.io/hostname"}]}}
    assert "topologySpreadConstraints" not in spec


def test_k_ranks_per_node_spread_at_most_k_and_fill_nodes() -> None:
    spec = pod_spec(16, 8)
    assert spec["topologySpreadConstraints"] == [{"maxSkew": 8, "topologyKey": "kubernetes.io/hostname",
                                                  "whenUnsatisfiable": "DoNotSchedule", "labelSelector": SAME_ATTEMPT,
                                                  "minDomains": 2}]
    (prefer,) = spec["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert prefer["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname" and prefer["weight"] == 100


def test_without_per_node_ranks_are_packed() -> None:
    spec = pod_spec(4)
    assert list(spec["affinity"]) == ["podAffinity"] and "topologySpreadConstraints" not in spec


def test_the_users_affinity_is_kept_beside_ours() -> None:
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "accelerator", "operator": "In", "values": ["ascend-910b"]}]}]}}}
    spec = pod_spec(2, 1, pod={"affinity": mine})
    assert spec["affinity"]["nodeAffinity"] == mine["nodeAffinity"] and "podAntiAffinity" in spec["affinity"]


def test_count_not_a_multiple_is_refused_at_admission() -> None:
    verdict = evaluate("CREATE", quantjob_manifest(devices={"type": "npu", "count": 6, "perNode": 4}))
    assert not verdict.allowed
    assert "spec.devices" in verdict.message and "not a multiple of perNode 4" in verdict.message
    assert evaluate("CREATE", quantjob_manifest(devices={"type": "npu", "count": 8, "perNode": 4})).allowed


def test_claims_every_rank_can_mount() -> None:
    from quantjob.operator.claims import judge

    job = review_quantjob(quantjob_manifest(count=4)).job
    assert job is not None
    assert judge(job, 4, [("spec.model.pvc", "m", ["ReadOnlyMany"]), ("spec.output.pvc", "o", ["ReadWriteMany"])]) \
        == (None, [])
    error, _ = judge(job, 4, [("spec.output.pvc", "o", ["ReadWriteOncePod"])])
    assert error is not None and "claim 'o' is ReadWriteOncePod" in error
    assert judge(job, 1, [("spec.output.pvc", "o", ["ReadWriteOncePod"])]) == (None, [])
