"""Issue 26.2: an UPDATE that keeps the spec, or touches an object being deleted, is judged on the
spec's immutability only (an operator setting changed since admission must not block labels or
finalizer removal)."""

from __future__ import annotations

import copy

from emulator import quantjob_manifest

from quantjob.operator.admission import evaluate
from quantjob.operator.settings import Settings

STRICT = Settings.model_validate({"allow_custom_image": False})


def admitted_then_forbidden() -> dict:
    """A QuantJob with spec.image, written while custom images were allowed."""
    return quantjob_manifest(image="registry.example/worker:1")


def test_create_is_judged_by_todays_policy() -> None:
    verdict = evaluate("CREATE", admitted_then_forbidden(), None, STRICT)
    assert not verdict.allowed and "spec.image" in verdict.message


def test_metadata_update_with_the_same_spec_is_allowed() -> None:
    old = admitted_then_forbidden()
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"team": "a"}
    new["metadata"]["finalizers"] = ["example.com/keep"]
    assert evaluate("UPDATE", new, old, STRICT).allowed


def test_finalizer_removal_during_a_delete_is_allowed() -> None:
    old = admitted_then_forbidden()
    old["metadata"]["finalizers"] = ["foregroundDeletion"]
    old["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = []
    assert evaluate("UPDATE", new, old, STRICT).allowed


def test_a_changed_spec_is_still_refused_and_named() -> None:
    old = admitted_then_forbidden()
    new = copy.deepcopy(old)
    new["spec"]["devices"] = {"type": "npu", "count": 4}
    verdict = evaluate("UPDATE", new, old, STRICT)
    assert not verdict.allowed and "spec.devices" in verdict.message and "immutable" in verdict.message
    deleting = copy.deepcopy(new)
    deleting["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    verdict = evaluate("UPDATE", deleting, old, STRICT)
    assert not verdict.allowed and "spec.devices" in verdict.message and "spec.image" not in verdict.message
