"""The reconciler's three steps apart: ``_observe`` only reads, ``_decide`` calls nothing, ``_act`` only
writes what the plan holds, in the plan's order (the kmock tests drive them together)."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest
from emulator import quantjob_manifest

from quantjob.operator import claims, kube
from quantjob.operator.reconcile import Reconciler
from quantjob.operator.settings import Settings

NOW = "2025-01-01T00:00:00Z"


def unreachable(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError("this step must not call the API")


def reconciler(**settings: Any) -> Reconciler:
    return Reconciler(Settings(**settings), api=lambda: None, clock=lambda: NOW)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Record every write; fail on every read."""
    done: list[tuple[str, ...]] = []
    monkeypatch.setattr(kube, "ensure", lambda api, child, uid: done.append(("ensure", child["kind"],
                                                                               child["metadata"]["name"])))
    monkeypatch.setattr(kube, "delete", lambda api, ref: done.append(("delete", ref.plural, ref.name)))
    monkeypatch.setattr(kube, "patch_quantjob_status",
                        lambda api, namespace, name, status: done.append(("status", status["phase"], status["reason"])))
    monkeypatch.setattr(kube, "create_event", lambda api, body, type_, reason, message, now: done.append(("event", reason)))
    for read in ("get", "list_owned", "list_events"):
        monkeypatch.setattr(kube, read, unreachable)
    monkeypatch.setattr(claims, "check_claims", unreachable)
    return done


def test_observe_reads_and_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    monkeypatch.setattr(kube, "get", lambda api, ref: read.append(ref.plural))
    monkeypatch.setattr(claims, "check_claims", lambda api, job, namespace, world: (None, ["a warning"]))
    for write in ("ensure", "delete", "patch_quantjob_status", "create_event"):
        monkeypatch.setattr(kube, write, unreachable)
    seen = reconciler(npu_runtime_class="ascend")._observe(quantjob_manifest("q"))
    assert seen.observed is not None and seen.observed.job is None and seen.conflict is None
    assert seen.observed.missing_runtime_class == "ascend" and seen.claim_warnings == ["a warning"]
    assert read == ["jobs", "runtimeclasses", "configmaps"]


def test_decide_calls_nothing_and_act_writes_the_plan_in_order(monkeypatch: pytest.MonkeyPatch,
                                                               writes: list[tuple[str, ...]]) -> None:
    monkeypatch.setattr(kube, "get", lambda api, ref: None)
    monkeypatch.setattr(claims, "check_claims", lambda api, job, namespace, world: (None, []))
    steps = reconciler(gang_scheduling="volcano")
    seen = steps._observe(quantjob_manifest("q"))
    monkeypatch.setattr(kube, "get", unreachable)
    plan = steps._decide(seen)
    assert writes == []
    assert plan.create_attempt == 1 and plan.status is not None and plan.status["reason"] == "Creating"
    assert all(child["metadata"]["ownerReferences"][0]["uid"] == "uid-1" for child in [*plan.setup, *plan.attempt])
    steps._act(seen, plan)
    created = [(kind, name) for step, kind, name in (w for w in writes if w[0] == "ensure")]
    assert created == [(c["kind"], c["metadata"]["name"]) for c in [*plan.setup, *plan.attempt]]
    assert created[-2:] == [("PodGroup", "q-a1"), ("Job", "q-a1")]
    assert writes[len(created):] == [("status", "Pending", "Creating")]


def test_a_foreign_job_is_a_conflict_the_plan_reports(monkeypatch: pytest.MonkeyPatch,
                                                      writes: list[tuple[str, ...]]) -> None:
    foreign = {"metadata": {"name": "q-a1", "ownerReferences": [{"uid": "someone-else", "controller": True}]}}
    monkeypatch.setattr(kube, "get", lambda api, ref: foreign)
    steps = reconciler()
    seen = steps._observe(quantjob_manifest("q"))
    assert seen.observed is None and seen.conflict is not None
    plan = steps._decide(seen)
    assert plan.create_attempt is None and plan.status is not None and plan.status["reason"] == "ChildConflict"
    steps._act(seen, plan)
    assert writes[-2:] == [("status", "Pending", "ChildConflict"), ("event", "ChildConflict")]
