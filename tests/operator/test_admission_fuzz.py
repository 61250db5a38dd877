"""Fuzzing admission (issue 14, Tests): mutations of the examples' QuantJobs and configs go through
``quantjob validate`` and through the webhook's admission path, in process.

For every mutated QuantJob (``QUANTJOB_FUZZ_EXAMPLES``, default 500, sets how many):

- ``validate`` and the cluster give the same verdict. The cluster is the API server (the CRD's
  structural schema, unknown fields refused as ``kubectl`` asks by default, nulls pruned, the
  object name) followed by the webhook (``admission_problems``, what kopf's handler calls);
- every refusal names a field;
- judging takes less than a second, each way;
- what is admitted renders into children that pass ``kubernetes-validate --strict``, and the
  worker accepts what the operator hands it: the pod command parses with the quantize flags, the
  ConfigMap's config resolves at the Job's world size without errors, the model type has an
  adapter, and the output path is not refused on a volume laid out as the pod sees it.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quantjob.api.check import resolve
from quantjob.api.crd import build_crd
from quantjob.api.model_types import model_type_problems
from quantjob.api.problems import Problem, has_errors
from quantjob.cli import build_parser
from quantjob.cli.quantize import QuantizeArgs, _load_config
from quantjob.cli.validate import validate_text
from quantjob.operator.admission import admission_problems
from quantjob.operator.builders import (
    CONFIG_FILE,
    MODEL_MOUNT,
    OUTPUT_MOUNT,
    build_children,
)
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import Settings
from quantjob.worker.device import parse_devices
from quantjob.worker.errors import QuantJobError
from quantjob.worker.save_path import check_save_path

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.31"
BUILT_IN = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Job", "NetworkPolicy")
JUDGE_S = 1.0


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


JOBS = [_load(p) for p in sorted((ROOT / "examples" / "quantjobs").glob("*.yaml"))]
CONFIGS = [_load(p) for p in sorted((ROOT / "examples" / "configs").glob("*.yaml"))]
INVALID = [_load(p) for p in sorted((ROOT / "examples" / "invalid").glob("*.yaml"))]


def _with_config(job: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(job)
    out["spec"].pop("quantType", None)
    out["spec"]["config"] = copy.deepcopy(config)
    return out


BASES = JOBS + [_with_config(job, config) for job in JOBS for config in CONFIGS] + \
    [doc if "kind" in doc else _with_config(JOBS[0], doc) for doc in INVALID]

# Values an adversarial user tries, by kind; any may land anywhere.
PATHS = ["./Qwen2-7B", "Qwen2-7B/", "a//b", ".", "..", "../x", "/abs", "~backup/x", "a:b/x", "a\\b", "", " ",
         "Qwen2-7B/sub", "x\x00y", "é/ü", "a/./b"]
NAMES = ["a", "A", "a.b", "a_b", "-a", "a-", "x" * 62, "x" * 64, "é", "qwen-2", "123", "a" * 253]
NUMBERS = [0, -1, 1, 2, 3, 8, 4096, 4097, 2 ** 31, 2 ** 63, 0.5, 1.0, 1e300, True, False, "4", "1.5"]
WORDS = ["npu", "cuda", "cpu", "tpu", "w8a8", "W8A8", "w4a16", "w3a5", "per_group", "per_tensor", "per_token",
         "int4", "int8", "fp8", "minmax", "ssz", "dp_layer_wise", "layer_wise", "model_wise", "auto",
         "linear_quant", "group", "awq", "quarot", "ascendv1_saver", "mindie_format_saver", "float", "quantized",
         "llama", "Qwen2.5-7B", "gpt2", "500m", "64Gi", "1e3", "HCCL_SOCKET_IFNAME", "team-a", "Team A"]
GLOBS = ["*", "lm_head", "{lm_head,model.*}", "*self_attn*", "model.layers.{0,1}.*", "{", "}", "[", "]", "{a,b}" * 18,
         "[!0-9]*", "*mlp*"]
SCALARS = [None, *PATHS, *NAMES, *NUMBERS, *WORDS, *GLOBS]
KEYS = ["path", "pvc", "type", "count", "scope", "dtype", "include", "exclude", "group_size", "ext", "act", "weight",
        "runner", "process", "save", "samples", "maxLength", "overwrite", "modelType", "env", "x", "Path", "typ"]

leaves = st.sampled_from(SCALARS)
junk = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
                    max_leaves=5)


def _containers(node: Any, found: list[Any]) -> list[Any]:
    if isinstance(node, (dict, list)):
        found.append(node)
        for child in (node.values() if isinstance(node, dict) else node):
            _containers(child, found)
    return found


def _leaves(node: Any, found: list[tuple[Any, Any, Any]], skip: str | None = None) -> list[tuple[Any, Any, Any]]:
    """(container, key or index, scalar) for every scalar under ``node``, the ``skip`` key's subtree left out."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        if key == skip:
            continue
        if isinstance(value, (dict, list)):
            _leaves(value, found)
        else:
            found.append((node, key, value))
    return found


def _like(value: Any) -> st.SearchStrategy[Any]:
    """Another scalar of the same kind, or the same value spelled as YAML users do (``"4"``, ``"true"``)."""
    if isinstance(value, bool):
        return st.sampled_from([True, False, "true", "false", "yes", 1, 0])
    if isinstance(value, int):
        return st.sampled_from([0, 1, 2, 3, 4, 7, 8, 16, 64, 128, 4096, 2 ** 20, -1, str(value), "4"])
    if isinstance(value, float):
        return st.sampled_from([0.0, 0.5, 1.0, 4.0, -1.0, str(value)])
    return st.sampled_from([*PATHS, *WORDS, *GLOBS, "models", "quantized", "calib/boolq.jsonl"])


@st.composite
def quantjobs(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        kind = draw(st.sampled_from(["replace", "delete", "add", "rename", "output-over-model", "name",
                                     "tweak", "tweak", "tweak"]))
        if kind == "tweak":  # a scalar for one of its own kind: mostly still valid, so admission is exercised
            # the QuantJob's own fields (typed by the CRD) more often than the config's
            leaves_found = _leaves(doc.get("spec"), [], skip=draw(st.sampled_from(["config", "config", None])))
            if leaves_found:
                parent, key, value = draw(st.sampled_from(leaves_found))
                parent[key] = draw(_like(value))
            continue
        if kind == "output-over-model" and isinstance(doc.get("spec"), dict):
            model = doc["spec"].get("model")
            if isinstance(model, dict) and isinstance(model.get("path"), str):
                spelled = draw(st.sampled_from(["{}", "./{}", "{}/", "{}//.", "{}/out", ".", "{}-w8a8"]))
                doc["spec"]["output"] = {"pvc": model.get("pvc"), "path": spelled.format(model["path"])}
            continue
        if kind == "name":
            doc.setdefault("metadata", {})["name"] = draw(st.sampled_from(NAMES))
            continue
        target = draw(st.sampled_from(_containers(doc.get("spec"), [])))
        if isinstance(target, dict):
            keys = sorted(target, key=str)
            if kind == "add" or not keys:
                target[draw(st.sampled_from(KEYS))] = draw(junk)
            elif kind == "delete":
                del target[draw(st.sampled_from(keys))]
            elif kind == "rename":
                key = draw(st.sampled_from(keys))
                target[draw(st.sampled_from(KEYS))] = target.pop(key)
            else:
                target[draw(st.sampled_from(keys))] = draw(junk)
        elif kind == "add" or not target:
            target.append(draw(junk))
        elif kind == "delete":
            target.pop(draw(st.integers(0, len(target) - 1)))
        else:
            target[draw(st.integers(0, len(target) - 1))] = draw(junk)
    return doc


# --- the API server, as far as it acts before the webhook ------------------------------------------

def _strict(node: Any) -> Any:
    """The CRD schema as the API server applies it with fieldValidation=Strict (kubectl's default)."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out["type"] = ["integer", "string"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    out.pop("x-kubernetes-preserve-unknown-fields", None)
    return out


CRD_SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
# the API server takes an integral float (4.0) for an integer, as kube-openapi's type check does
_TYPES = jsonschema.Draft4Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, value: (isinstance(value, int) and not isinstance(value, bool))
    or (isinstance(value, float) and value.is_integer()))
SCHEMA = jsonschema.validators.extend(jsonschema.Draft4Validator, type_checker=_TYPES)(_strict(CRD_SCHEMA))
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _pruned(node: Any, schema: dict[str, Any]) -> Any:
    """Nulls of known fields pruned (none is nullable); unknown fields and preserved subtrees
    (``spec.config``) kept as they are."""
    if isinstance(node, dict) and "properties" in schema:
        known = schema["properties"]
        return {key: _pruned(value, known.get(key, {})) for key, value in node.items()
                if not (value is None and key in known)}
    if isinstance(node, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {key: _pruned(value, schema["additionalProperties"]) for key, value in node.items()
                if value is not None}
    if isinstance(node, list) and isinstance(schema.get("items"), dict):
        return [_pruned(item, schema["items"]) for item in node]
    return node


def api_server_accepts(doc: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Whether the API server lets the object reach the webhook, and the object it sends."""
    try:
        sent = json.loads(json.dumps(_pruned(doc, CRD_SCHEMA), allow_nan=False))
    except ValueError:  # not JSON (the client could not even send it)
        return False, doc
    name = (sent.get("metadata") or {}).get("name")
    if not isinstance(name, str) or len(name) > 253 or not SUBDOMAIN.match(name):
        return False, sent
    return SCHEMA.is_valid(sent), sent


# --- what the worker does with an admitted QuantJob before its first layer ---------------------------

def _worker_preflight(job_manifest: dict[str, Any], config_text: str, tmp: Path) -> list[str]:
    """The checks ``quantjob quantize`` runs on the pod's command, config and volumes before any
    weight is read; a list of what failed."""
    container = job_manifest["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    argv = container.get("args") or container["command"][1:]  # the image's entry point runs ``quantjob "$@"``
    assert argv[0] == "quantize", argv
    config_path = tmp / CONFIG_FILE
    config_path.write_text(config_text, encoding="utf-8")
    namespace = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(namespace).items() if k in QuantizeArgs.model_fields}
    values["config_path"] = str(config_path)
    failures: list[str] = []
    args = QuantizeArgs.model_validate(values)
    parse_devices(args.device)
    loaded = _load_config(args)
    if isinstance(loaded, list):
        return loaded
    failures += [str(p) for p in model_type_problems(None, args.model_type, override_at="--model_type")]
    resolution = resolve(loaded, devices=int(env["WORLD_SIZE"]), prefix="")
    failures += [str(p) for p in resolution.problems if p.severity == "error"]
    # the volumes as the pod sees them: one directory per claim, mounted where the Job mounts it
    claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"]
              for volume in job_manifest["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in volume}
    mounts = {mount["mountPath"]: claims[mount["name"]] for mount in container["volumeMounts"] if mount["name"] in claims}
    root = tmp / "node"

    def local(path: Path) -> Path:
        for mount_path, claim in mounts.items():
            if str(path) == mount_path or str(path).startswith(mount_path + "/"):
                return root / "claims" / claim / str(path)[len(mount_path):].lstrip("/")
        raise AssertionError(f"{path} is on no volume")

    model = local(args.model_path)
    model.mkdir(parents=True, exist_ok=True)
    assert str(args.model_path).startswith(MODEL_MOUNT) and str(args.save_path).startswith(OUTPUT_MOUNT)
    try:
        check_save_path(local(args.save_path), model)
    except QuantJobError as error:
        failures.append(str(error))
    return failures


def _timed(action: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


@settings(max_examples=int(os.environ.get("QUANTJOB_FUZZ_EXAMPLES", "500")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(quantjobs())
def test_validate_and_admission_agree_and_admitted_jobs_run(tmp_path_factory: pytest.TempPathFactory,
                                                            doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    out = io.StringIO()
    code, validate_s = _timed(lambda: validate_text("job.yaml", text, None, out))
    reached, sent = api_server_accepts(doc)
    problems, webhook_s = _timed(lambda: admission_problems("CREATE", sent, None) if reached else [])
    assert validate_s < JUDGE_S and webhook_s < JUDGE_S, (validate_s, webhook_s)
    admitted = reached and not has_errors(problems)
    assert (code == 0) == admitted, f"validate says {code}, the cluster {admitted}:\n{out.getvalue()}{problems}"
    refusals: list[Problem] = [p for p in problems if p.severity == "error"]
    assert all(p.path and p.path != "<document>" for p in refusals), refusals
    for line in out.getvalue().splitlines():
        if not line.startswith("job.yaml"):  # problems are "path: message"; verdict lines name the file
            assert re.match(r"^[A-Za-z_][\w.\[\]-]*: ", line), line
    event("admitted" if admitted else "refused by the webhook" if reached else "refused by the API server")
    if not admitted:
        return
    resolution = review_quantjob(sent)
    assert resolution.job is not None
    children = build_children(resolution.job, resolution, Settings(), "ml")
    for child in children:
        if child["kind"] in BUILT_IN:  # custom resources (a gang's PodGroup) have no schema here
            kubernetes_validate.validate(child, KUBERNETES_VERSION, strict=True)
    job = next(child for child in children if child["kind"] == "Job")
    config_text = next(child["data"][CONFIG_FILE] for child in children
                       if child["kind"] == "ConfigMap" and CONFIG_FILE in child.get("data", {}))
    failures = _worker_preflight(job, config_text, tmp_path_factory.mktemp("pod"))
    assert not failures, failures
