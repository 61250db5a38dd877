"""The CRD itself keeps the spec immutable (a CEL transition rule), so it holds without the webhook.

The rule is read from the committed CRD and evaluated with cel-python the way the API server
evaluates a transition rule on an UPDATE: ``self`` is the new spec, ``oldSelf`` the stored one. The
API server's CEL cost estimation is not reproduced here (that needs a real API server).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from emulator import quantjob_manifest

CRD = Path(__file__).resolve().parents[2] / "crds" / "quantjob.io_quantjobs.yaml"


def spec_rules() -> list[dict[str, Any]]:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return list(spec["x-kubernetes-validations"])


def admitted(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Messages of the spec rules that refuse the UPDATE from ``old`` to ``new``."""
    environment = celpy.Environment()
    refused = []
    for rule in spec_rules():
        program = environment.program(environment.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(new["spec"]), "oldSelf": celpy.json_to_cel(old["spec"])})
        if not bool(result):
            refused.append(rule["message"])
    return refused


def test_the_generated_crd_carries_the_rule() -> None:
    assert spec_rules() == [{"rule": "self == oldSelf", "message": "spec is immutable; delete the QuantJob and "
                                                                   "create it again (or under a new name) to change it"}]


@pytest.mark.parametrize("change", [
    lambda body: body["spec"]["devices"].update(count=4),
    lambda body: body["spec"].update(env={"HCCL_SOCKET_IFNAME": "eth1"}),
    lambda body: body["spec"]["output"].update(overwrite=True),
    lambda body: body["spec"].pop("calibration"),
])
def test_an_update_that_changes_the_spec_is_refused(change: Any) -> None:
    old = quantjob_manifest()
    new = copy.deepcopy(old)
    change(new)
    assert admitted(old, new) == [spec_rules()[0]["message"]]


def test_an_update_of_metadata_only_is_allowed() -> None:
    old = quantjob_manifest()
    old["status"] = {"phase": "Running", "job": "qwen2-w8a8-a1"}
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"team": "a"}
    new["metadata"]["annotations"] = {"note": "relabelled"}
    assert admitted(old, new) == []
