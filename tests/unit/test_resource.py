from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from quantjob.api.problems import from_validation_error
from quantjob.api.resource import (
    API_VERSION,
    Devices,
    Progress,
    QuantJob,
    QuantJobStatus,
    ResourceRequirements,
    check_relative_path,
)


def manifest(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"pvc": "models", "path": "Qwen2.5-7B"},
                            "output": {"pvc": "quantized", "path": "Qwen2.5-7B-w8a8"}, "quantType": "w8a8"}
    base.update(spec)
    return {"apiVersion": API_VERSION, "kind": "QuantJob", "metadata": {"name": "job"}, "spec": base}


def paths_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        QuantJob.model_validate(data)
    return [p.path for p in from_validation_error(caught.value)]


def test_minimal_manifest_and_defaults() -> None:
    job = QuantJob.model_validate(manifest())
    spec = job.spec
    assert (spec.devices.type, spec.devices.count, spec.maxRestarts) == ("npu", 1, 3)
    assert spec.resolved_config().linear_quants()[0][1].qconfig.act.scope == "per_tensor"
    assert spec.calibration.path is None and spec.calibration.samples == 128


@pytest.mark.parametrize(("kind", "name"), [("npu", "huawei.com/Ascend910"), ("cuda", "nvidia.com/gpu"),
                                            ("cpu", None)])
def test_device_resource_name_defaults_by_type(kind: str, name: str | None) -> None:
    assert Devices(type=kind).effective_resource_name() == name  # type: ignore[arg-type]
    assert Devices(type=kind, resourceName="huawei.com/Ascend910B3").effective_resource_name() == \
        "huawei.com/Ascend910B3"  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["Qwen2.5-7B", "models/Qwen2.5-7B", ".", "a/./b", "weird..name"])
def test_relative_paths_are_accepted(path: str) -> None:
    assert check_relative_path(path) == path


@pytest.mark.parametrize(("path", "fragment"), [
    ("/models/qwen", "relative"), ("\\\\server\\share", "relative"), ("C:/models", "relative"),
    ("~/models", "relative"), ("../models", "'..'"), ("a/../../b", "'..'"), ("a\\..\\b", "'..'"),
    ("", "empty"), ("   ", "empty"), ("a\x00b", "NUL"),
])
def test_paths_leaving_the_volume_are_rejected(path: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_relative_path(path)


@pytest.mark.parametrize(("field", "value", "path"), [
    ("model", {"pvc": "models", "path": "/abs"}, "spec.model.path"),
    ("output", {"pvc": "quantized", "path": "../x"}, "spec.output.path"),
    ("calibration", {"path": "../calib.jsonl"}, "spec.calibration.path"),
    ("calibration", {"samples": 0}, "spec.calibration.samples"),
    ("model", {"pvc": "Models_PVC", "path": "x"}, "spec.model.pvc"),
    ("devices", {"type": "tpu"}, "spec.devices.type"),
    ("devices", {"count": 0}, "spec.devices.count"),
    ("quantType", "w3a5", "spec.quantType"),
    ("nextLayerInput", "fp8", "spec.nextLayerInput"),
    ("backofLimit", 3, "spec.backofLimit"),
])
def test_invalid_fields_have_paths(field: str, value: Any, path: str) -> None:
    assert path in paths_of(manifest(**{field: value}))


def test_quant_type_and_config_are_mutually_exclusive() -> None:
    config = {"spec": {"process": [{"type": "linear_quant", "qconfig": {"weight": {}}}]}}
    problems = paths_of(manifest(config=config))
    assert problems == ["spec.quantType"]
    data = manifest()
    del data["spec"]["quantType"]
    assert paths_of(data) == ["spec.quantType"]


def test_config_errors_carry_the_full_path() -> None:
    config = {"spec": {"process": [{"type": "linear_quant", "qconfig": {"weight": {"scope": "per_row"}}}]}}
    data = manifest(config=config)
    del data["spec"]["quantType"]
    assert paths_of(data) == ["spec.config.spec.process[0].qconfig.weight.scope"]


def test_quantities_may_be_numbers() -> None:
    resources = ResourceRequirements.model_validate({"requests": {"cpu": 4, "memory": "64Gi"}})
    assert resources.requests == {"cpu": "4", "memory": "64Gi"}


def test_progress_summary_for_the_printer_column() -> None:
    assert Progress(layersDone=3, layersTotal=16).summary == "3/16"
    assert Progress().summary is None
    status = QuantJobStatus.model_validate({"phase": "Running", "progress": {"layersDone": 1, "layersTotal": 2},
                                            "kopf": {"progress": {}}})
    assert status.progress is not None and status.progress.summary == "1/2"
    assert status.model_extra == {"kopf": {"progress": {}}}
