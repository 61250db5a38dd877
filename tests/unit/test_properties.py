"""Property tests: valid specs round-trip through YAML and the CRD schema; mutations never crash the check."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantjob.api.check import check_document
from quantjob.api.crd import build_crd
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.problems import Problem
from quantjob.api.resource import QuantJob

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.sampled_from(["model", "layers", "self_attn", "mlp", "q_proj", "down_proj", "gate", "experts"])
segment = st.one_of(names, st.integers(0, 63).map(str), st.sampled_from(["*", "?", "[0-3]", "[!0]"]))
brace = st.lists(st.integers(0, 9).map(str), min_size=1, max_size=3).map(lambda xs: "{" + ",".join(xs) + "}")
globs = st.lists(st.one_of(segment, brace), min_size=1, max_size=5).map(".".join)


@st.composite
def weight_specs(draw: st.DrawFn) -> dict[str, Any]:
    scope = draw(st.sampled_from(["per_channel", "per_group"]))
    spec: dict[str, Any] = {"scope": scope, "dtype": draw(st.sampled_from(["int8", "int4"])),
                            "symmetric": draw(st.booleans()), "method": draw(st.sampled_from(["minmax", "ssz"]))}
    if scope == "per_group":
        spec["ext"] = {"group_size": draw(st.sampled_from([32, 64, 128]))}
    return spec


act_specs = st.fixed_dictionaries({"scope": st.sampled_from(["per_tensor", "per_token"]), "dtype": st.just("int8"),
                                   "symmetric": st.booleans(), "method": st.just("minmax")})


@st.composite
def linear_quants(draw: st.DrawFn) -> dict[str, Any]:
    qconfig: dict[str, Any] = {"weight": draw(weight_specs())}
    if draw(st.booleans()):
        qconfig["act"] = draw(act_specs)
    return {"type": "linear_quant", "qconfig": qconfig, "include": draw(st.lists(globs, max_size=3)),
            "exclude": draw(st.lists(globs, max_size=2))}


unit = st.floats(0.0, 1.0, allow_nan=False)
smooths = st.fixed_dictionaries(
    {"type": st.sampled_from(["iter_smooth", "flex_smooth_quant", "flex_smooth"]),
     "enable_subgraph_type": st.lists(st.sampled_from(["norm-linear", "linear-linear", "ov", "up-down"]),
                                      min_size=1, max_size=4, unique=True)},
    optional={"alpha": unit, "include": st.lists(globs, max_size=2)})
others = st.fixed_dictionaries({"type": st.sampled_from(["quarot", "awq", "kv_smooth"])},
                               optional={"block_size": st.integers(1, 128), "n_grid": st.integers(1, 40)})
processors = st.one_of(linear_quants(), smooths, others,
                       st.lists(linear_quants(), min_size=1, max_size=3).map(lambda c: {"type": "group", "configs": c}))
savers = st.fixed_dictionaries({"type": st.sampled_from(["ascendv1_saver", "distributed_ascendv1_saver"])},
                               optional={"part_file_size": st.one_of(st.integers(0, 8), st.floats(0.5, 8.0))})
configs = st.fixed_dictionaries(
    {"apiversion": st.just("modelslim_v1"),
     "spec": st.fixed_dictionaries({"process": st.lists(processors, min_size=1, max_size=4)},
                                   optional={"runner": st.sampled_from(["auto", "layer_wise", "dp_layer_wise",
                                                                        "model_wise"]),
                                             "save": st.lists(savers, max_size=2),
                                             "dataset": st.sampled_from(["mix_calib.jsonl", "boolq.jsonl"])})},
    optional={"metadata": st.fixed_dictionaries({"config_id": st.text("abc-_0123", min_size=1, max_size=12)})})

pvcs = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
rel_paths = st.lists(st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}\Z").filter(lambda s: s != ".."),
                     min_size=1, max_size=3).map("/".join)


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"pvc": draw(pvcs), "path": draw(rel_paths), "trustRemoteCode": draw(st.booleans())},
        "output": {"pvc": draw(pvcs), "path": draw(rel_paths), "overwrite": draw(st.booleans())},
        "devices": {"type": draw(st.sampled_from(["npu", "cuda", "cpu"])), "count": draw(st.integers(1, 16))},
        "calibration": {"path": draw(rel_paths), "samples": draw(st.integers(1, 512)),
                        "maxLength": draw(st.integers(8, 4096))},
        "resources": {"requests": {"cpu": draw(st.one_of(st.integers(1, 64), st.just("500m")))}},
    }
    if draw(st.booleans()):
        spec["quantType"] = draw(st.sampled_from(["w8a8", "w8a8_dynamic", "w8a16", "w4a16"]))
    else:
        spec["config"] = draw(configs)
    if draw(st.booleans()):
        spec["queueName"] = "team-a"
    return {"apiVersion": "quantjob.io/v1alpha1", "kind": "QuantJob", "metadata": {"name": "job", "namespace": "ml"},
            "spec": spec}


def _crd_validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


CRD = _crd_validator()


@SETTINGS
@given(configs)
def test_configs_round_trip_through_yaml(data: dict[str, Any]) -> None:
    config = ModelslimConfig.model_validate(data)
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    assert ModelslimConfig.model_validate(yaml.safe_load(text)) == config


@SETTINGS
@given(manifests())
def test_manifests_round_trip_through_yaml_and_the_crd_schema(data: dict[str, Any]) -> None:
    job = QuantJob.model_validate(data)
    dumped = job.model_dump(mode="json", exclude_none=True)
    CRD.validate(data)
    CRD.validate(dumped)
    assert QuantJob.model_validate(yaml.safe_load(yaml.safe_dump(dumped))) == job


junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 6), st.floats(allow_nan=True),
                              st.text(max_size=8), st.sampled_from(["*", "{", "[", "..", "/abs", "linear_quant"])),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                    max_leaves=6)


def _containers(node: Any, found: list[Any]) -> list[Any]:
    if isinstance(node, (dict, list)):
        found.append(node)
        for child in (node.values() if isinstance(node, dict) else node):
            _containers(child, found)
    return found


@SETTINGS
@given(st.one_of(manifests(), configs), st.data())
def test_mutations_yield_problems_never_exceptions(data: dict[str, Any], draw: st.DataObject) -> None:
    mutated = copy.deepcopy(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        target = draw.draw(st.sampled_from(_containers(mutated, [])))
        action = draw.draw(st.sampled_from(["replace", "delete", "add"]))
        if isinstance(target, dict):
            keys = sorted(target, key=str)
            if action == "add" or not keys:
                target[draw.draw(st.text(max_size=8))] = draw.draw(junk)
            elif action == "delete":
                del target[draw.draw(st.sampled_from(keys))]
            else:
                target[draw.draw(st.sampled_from(keys))] = draw.draw(junk)
        elif action == "add" or not target:
            target.append(draw.draw(junk))
        elif action == "delete":
            target.pop(draw.draw(st.integers(0, len(target) - 1)))
        else:
            target[draw.draw(st.integers(0, len(target) - 1))] = draw.draw(junk)
    devices = draw.draw(st.one_of(st.none(), st.integers(1, 8)))
    result = check_document(mutated, devices=devices)
    assert all(isinstance(p, Problem) and isinstance(p.path, str) and p.message for p in result.problems)
    if result.ok:
        assert result.config is not None and result.runner in {"layer_wise", "dp_layer_wise"}
