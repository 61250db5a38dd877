from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import EXAMPLES, ROOT, load

from quantjob.api.crd import DEFAULT_PATH, build_crd, render_crd
from quantjob.cli import main

COMMITTED = ROOT / DEFAULT_PATH


def root_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    return (crd or build_crd())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def test_committed_crd_is_what_the_command_generates() -> None:
    assert COMMITTED.exists(), f"{DEFAULT_PATH} is missing: run `quantjob crd`"
    assert COMMITTED.read_text(encoding="utf-8") == render_crd(), \
        f"{DEFAULT_PATH} is stale: run `quantjob crd` and commit the result"


def test_command_writes_the_file_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out" / "crd.yaml"
    assert main(["crd", "--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_crd()
    capsys.readouterr()
    assert main(["crd", "--output", "-"]) == 0
    assert capsys.readouterr().out == render_crd()


def test_crd_is_a_valid_apiextensions_v1_object() -> None:
    kubernetes_validate.validate(yaml.safe_load(render_crd()), "1.31", strict=True)


def test_schema_is_structural() -> None:
    allowed_untyped = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")
    for path, node in nodes(root_schema()):
        assert "type" in node or any(node.get(k) for k in allowed_untyped), f"{path or '<root>'} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "default", "const", "$defs"):
            assert banned not in node, f"{path}: {banned} is not allowed in a structural schema"
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(node["exclusiveMinimum"], bool):
            pytest.fail(f"{path}: exclusiveMinimum must be boolean in OpenAPI v3.0")


def test_names_subresource_and_printer_columns() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "quantjobs.quantjob.io"
    assert crd["spec"]["names"]["shortNames"] == ["qj"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"Phase": ".status.phase", "Ready": ".status.readySummary", "Devices": ".spec.devices.count",
                       "Attempt": ".status.attempt", "Progress": ".status.progress.summary",
                       "ETA": ".status.progress.eta",  # issue 26: time left at the attempt's pace
                       "Reason": ".status.reason", "Runner": ".status.runner",
                       "Age": ".metadata.creationTimestamp"}
    schema = root_schema(crd)
    for column in version["additionalPrinterColumns"][:-1]:  # every column path exists in the schema
        node = schema
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]


def test_config_is_kept_verbatim_and_described() -> None:
    config = root_schema()["properties"]["spec"]["properties"]["config"]
    assert config["x-kubernetes-preserve-unknown-fields"] is True and config["type"] == "object"
    assert "webhook" in config["description"]


def _validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(root_schema())


def manifest_with(config_file: Path) -> dict[str, Any]:
    return {"apiVersion": "quantjob.io/v1alpha1", "kind": "QuantJob", "metadata": {"name": "example"},
            "spec": {"model": {"pvc": "models", "path": "m"}, "output": {"pvc": "out", "path": "o"},
                     "devices": {"type": "npu", "count": 2}, "resources": {"requests": {"cpu": 4}},
                     "config": load(config_file)}}


@pytest.mark.parametrize("config_file", sorted((EXAMPLES / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_pass_the_crd_schema(config_file: Path) -> None:
    _validator().validate(manifest_with(config_file))


def test_crd_schema_rejects_what_the_models_reject() -> None:
    data = manifest_with(EXAMPLES / "configs" / "qwen2.5-7b-w8a8.yaml")
    for mutate in (lambda d: d["spec"]["devices"].update(type="tpu"),
                   lambda d: d["spec"]["devices"].update(count=0),
                   lambda d: d["spec"]["model"].pop("pvc"),
                   lambda d: d["spec"]["model"].update(pvc="Bad_Name")):
        broken = copy.deepcopy(data)
        mutate(broken)
        assert not _validator().is_valid(broken)
