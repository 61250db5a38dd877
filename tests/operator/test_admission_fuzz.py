"""Fuzzing admission (issue 14, Tests): mutations of the examples' QuantJobs and configs go through
``quantjob validate`` and through the webhook's admission path, in process.

For every mutated QuantJob (``QUANTJOB_FUZZ_EXAMPLES``, default 500, sets how many):

- ``validate`` and the cluster give the same verdict. The cluster is the API server (the CRD's
  structural schema, unknown fields refused as ``kubectl`` asks by default, nulls pruned, the
  object name) followed by the webhook (``admission_problems``, what kopf's handler calls);
- every refusal names a field;
- judging takes less than a second, each way;
- what is admitted renders into children that pass ``kubernetes-validate --strict`` and keep the
  pod's guarantees (``_pod_guarantees``, issue 27): no ``$(`` for the kubelet to expand, paths that
  stay inside their volumes, user mounts only where the image holds no code, no variable that makes
  the entry point or a library run other code, no loosened confinement, resource names and
  quantities the API server takes, a ConfigMap within 1 MiB; and the worker accepts what the
  operator hands it: the pod command parses with the quantize flags, the
  ConfigMap's config resolves at the Job's world size without errors, the model type has an
  adapter, and the output path is not refused on a volume laid out as the pod sees it.
"""

from __future__ import annotations

import copy
import io
import json
import os
import posixpath
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
from quantjob.worker.entry import WorkerArgs as QuantizeArgs
from quantjob.worker.entry import load_config as _load_config
from quantjob.worker.errors import QuantJobError
from quantjob.worker.group.device import parse_devices
from quantjob.worker.savers.save_path import check_save_path

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


# --- hostile classes (issues 26 and 27): each draws values of one kind of escape, valid ones among them

EXPANSIONS = ["$(X)", "a/$(X)", "$(HOME)", "$$(X)", "$(QUANTJOB_NAME)/x", "$X", "${X}", "a$b", "(x)"]
MOUNT_PATHS = ["/mnt/extra", "/data", "/srv/ref", "/mnt", "/mnt/model", "/mnt/model/x", "/mnt/./model",
               "/mnt/x/../model", "/x/../etc/quantjob", "/mnt//extra", "/mnt/extra/", "/mnt/extra/.", "/",
               "/opt/quantjob/bin", "/opt", "/usr/bin", "/usr/local/bin/quantjob-worker-entrypoint", "/etc",
               "/usr/local/Ascend/driver", "/usr//local/Ascend/driver", "/tmp/x", "/dev/shm/x", "/lib",
               "/var/run/secrets/kubernetes.io/serviceaccount", "/mnt/" + "x" * 255, "/mnt/" + "x" * 256,
               "/mnt/" + "é" * 128, "/data/$(X)", "relative", "/mnt/a:b"]
ENV_NAMES = ["BASH_ENV", "ENV", "PATH", "ASCEND_HOME", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH",
             "PYTHONSTARTUP", "SHELLOPTS", "BASHOPTS", "PS4", "ASCEND_CUSTOM_OPP_PATH", "ASCEND_OPP_PATH",
             "NCCL_NET_PLUGIN", "CUDA_INJECTION64_PATH", "OPENSSL_CONF", "GCONV_PATH", "HCCL_SOCKET_IFNAME",
             "NCCL_DEBUG", "ASCEND_GLOBAL_LOG_LEVEL", "X"]
ANNOTATIONS = [("container.apparmor.security.beta.kubernetes.io/worker", v)
               for v in ("unconfined", "runtime/default", "localhost/strict", "localhost/", "")] + \
              [("seccomp.security.alpha.kubernetes.io/pod", v) for v in ("unconfined", "runtime/default")] + \
              [("container.seccomp.security.alpha.kubernetes.io/worker", v) for v in ("localhost/x", "")] + \
              [("io.kubernetes.cri-o.Devices", "/dev/sda"), ("example.com/team", "a")]
RESOURCE_NAMES = ["memory", "cpu", "ephemeral-storage", "hugepages-2Mi", "huawei.com/Ascend910", "nvidia.com/gpu",
                  "huawei.com/Ascend\x00", "huawei.com/Ascénd", "huawei.com/" + "a" * 64, "a" * 5000,
                  "kubernetes.io/npu", "example.com/", "/npu"]
QUANTITIES = ["1e999999999", "1e-999999999", "9Ei", "7Ei", "8Ei", "9223372036854775807", "9223372036854775808",
              "64Gi", "500m", "1e3", "0", "-1", 2 ** 63, "1.5", " 4", "4 ", "0x10", "1" * 120]
VOLUME_BODIES = [
    {"configMap": {"name": "c"}}, {"configMap": {}}, {"configMap": {"name": "c", "defaultMode": 0o1000}},
    {"configMap": {"name": "c", "items": [{"key": "k", "path": "../x"}]}},
    {"configMap": {"name": "c", "items": [{"key": "k", "path": "a/k"}]}},
    {"secret": {"secretName": "s"}}, {"secret": {"secretName": "S"}}, {"secret": {"name": "s"}},
    {"emptyDir": {}}, {"emptyDir": {"medium": "Disk"}}, {"emptyDir": {"sizeLimit": "1e999999999"}},
    {"emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    {"persistentVolumeClaim": {"claimName": "c"}}, {"persistentVolumeClaim": {"claimName": "c", "x": 1}},
    {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}},
    {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "spec.nodeName"}}]}},
    {"projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 60}}]}},
    {"projected": {"sources": [{"configMap": {"name": "c"}}]}},
    {"csi": {"driver": "x.example.com"}}, {"csi": {}},
    {"ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"],
                                                    "resources": {"requests": {"storage": "1Gi"}}}}}},
    {"ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["Sometimes"],
                                                    "resources": {"requests": {"storage": "1Gi"}}}}}},
]
_TERM = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
AFFINITIES = [
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_TERM]}}},
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "Near", "values": ["a"]}]}]}}},
    {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "preference": _TERM}]}},
    {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": _TERM}]}},
    {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"a": "b"}}}]}},
    {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]}},
    {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "k", "x": 1}]}},
]
TOLERATION_SECONDS = [0, -1, 300, 2 ** 63 - 1, 2 ** 63, -(2 ** 63) - 1]
BIG_NOTES = "x" * 1_100_000


def _spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec")
    return spec if isinstance(spec, dict) else None


def _sub(spec: dict[str, Any], key: str) -> dict[str, Any]:
    if not isinstance(spec.get(key), dict):
        spec[key] = {}
    return spec[key]


@st.composite
def hostile(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    """One escape of issue 26/27 applied to ``doc`` (in place), drawn from its class."""
    spec = _spec(doc)
    if spec is None:
        return
    kind = draw(st.sampled_from(["expansion", "mount", "env", "annotation", "resource-name", "volume", "affinity",
                                 "toleration", "quantity", "long-path", "namespace", "generate-name", "size"]))
    event(f"hostile: {kind}")
    if kind == "expansion":
        value = draw(st.sampled_from(EXPANSIONS))
        where = draw(st.sampled_from(["model", "output", "calibration", "modelType", "env", "subPath"]))
        if where in ("model", "output", "calibration"):
            _sub(spec, where)["path"] = value
        elif where == "modelType":
            _sub(spec, "model")["modelType"] = value
        elif where == "env":
            _sub(spec, "env")["HCCL_SOCKET_IFNAME"] = value
        else:
            _sub(spec, "pod").update(volumes=[{"name": "extra", "emptyDir": {}}],
                                     volumeMounts=[{"name": "extra", "mountPath": "/mnt/extra", "subPath": value}])
        _sub(spec, "env")["X"] = draw(st.sampled_from(["../../tmp/x", "x", "/var/run/secrets"]))
    elif kind == "mount":
        mounts = [{"name": "extra", "mountPath": path, **({"readOnly": True} if draw(st.booleans()) else {})}
                  for path in draw(st.lists(st.sampled_from(MOUNT_PATHS), min_size=1, max_size=2))]
        _sub(spec, "pod").update(volumes=[{"name": "extra", "emptyDir": {}}], volumeMounts=mounts)
    elif kind == "env":
        _sub(spec, "env")[draw(st.sampled_from(ENV_NAMES))] = "/mnt/model/x"
    elif kind == "annotation":
        key, value = draw(st.sampled_from(ANNOTATIONS))
        _sub(_sub(spec, "pod"), "annotations")[key] = value
    elif kind == "resource-name":
        _sub(spec, "devices")["resourceName"] = draw(st.sampled_from(RESOURCE_NAMES))
    elif kind == "volume":
        body = copy.deepcopy(draw(st.sampled_from(VOLUME_BODIES)))
        pod = _sub(spec, "pod")
        pod["volumes"] = [{"name": "extra", **body}]
        if draw(st.booleans()):
            pod["volumeMounts"] = [{"name": "extra", "mountPath": "/mnt/extra"}]
    elif kind == "affinity":
        _sub(spec, "pod")["affinity"] = copy.deepcopy(draw(st.sampled_from(AFFINITIES)))
    elif kind == "toleration":
        _sub(spec, "pod")["tolerations"] = [{"key": "k", "operator": "Exists", "effect": "NoExecute",
                                             "tolerationSeconds": draw(st.sampled_from(TOLERATION_SECONDS))}]
    elif kind == "quantity":
        value = draw(st.sampled_from(QUANTITIES))
        where = draw(st.sampled_from(["shmSize", "requests.cpu", "limits.memory", "sizeLimit"]))
        if where == "shmSize":
            spec["shmSize"] = value
        elif where == "sizeLimit":
            _sub(spec, "pod")["volumes"] = [{"name": "extra", "emptyDir": {"sizeLimit": value}}]
        else:
            side, name = where.split(".")
            _sub(_sub(spec, "resources"), side)[name] = value
    elif kind == "long-path":
        length = draw(st.sampled_from([255, 256, 1000]))
        part = draw(st.sampled_from(["x" * length, "é" * (length // 2)]))
        _sub(spec, draw(st.sampled_from(["model", "output", "calibration"])))["path"] = f"d/{part}"
    elif kind == "namespace":
        doc.setdefault("metadata", {})["namespace"] = draw(st.sampled_from([5, True, "ml", "ML", ["ml"]]))
    elif kind == "generate-name":
        meta = doc.setdefault("metadata", {})
        meta.pop("name", None)
        meta["generateName"] = draw(st.sampled_from(["q" * 58, "q" * 40 + "-", "qwen-", "Q-", "q" * 70]))
        _sub(spec, "devices")["count"] = draw(st.sampled_from([2, 100, 2000]))
    elif kind == "size" and isinstance(spec.get("config"), dict):
        spec["config"]["notes"] = BIG_NOTES


@st.composite
def quantjobs(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        kind = draw(st.sampled_from(["replace", "delete", "add", "rename", "output-over-model", "name",
                                     "tweak", "tweak", "tweak", "hostile", "hostile"]))
        if kind == "hostile":
            draw(hostile(doc))
            continue
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
    metadata = sent.get("metadata")
    if not isinstance(metadata, dict) or any(not isinstance(metadata[key], str)
                                             for key in ("name", "generateName", "namespace") if key in metadata):
        return False, sent  # ObjectMeta is typed
    if "name" not in metadata and metadata.get("generateName"):  # filled before the validating webhooks
        metadata["name"] = metadata["generateName"][:58] + "x7k2q"
    name = metadata.get("name")
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


# The pod's guarantees, written apart from the code that keeps them (issue 27): a fuzz case that breaks
# one is an escape admission missed.
CODE_RUNNING_ENV = {"PATH", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "ASCEND_HOME", "GCONV_PATH",
                    "OPENSSL_CONF"}
CODE_RUNNING_PREFIXES = ("LD_", "PYTHON", "BASH_FUNC_")
CODE_RUNNING_SUFFIXES = ("_PATH", "_HOME", "_PLUGIN")
USER_MOUNT_ROOTS = ("/mnt/", "/data", "/srv")
OPERATOR_ENV = {"HOME", "TMPDIR", "QUANTJOB_SERVICE_ACCOUNT_DIR"}
INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _pod_guarantees(children: list[dict[str, Any]]) -> list[str]:
    broken: list[str] = []
    job = next(child for child in children if child["kind"] == "Job")
    template = job["spec"]["template"]
    pod, container = template["spec"], template["spec"]["containers"][0]
    args = container["args"]
    own_mounts = {"/mnt/model", "/mnt/output", "/mnt/calibration", "/etc/quantjob", "/tmp", "/dev/shm",
                  "/var/run/secrets/kubernetes.io/serviceaccount"}
    if any("$(" in arg for arg in args):
        broken.append(f"args hold '$(': {args}")
    for item in container["env"]:
        if "$(" in item.get("value", ""):
            broken.append(f"env {item['name']} holds '$('")
        name = item["name"].upper()
        if item["name"] not in OPERATOR_ENV and (name in CODE_RUNNING_ENV or name.startswith(CODE_RUNNING_PREFIXES)
                                                 or name.endswith(CODE_RUNNING_SUFFIXES)):
            broken.append(f"env {item['name']} can run other code")
    for flag, root in (("--model_path", "/mnt/model"), ("--save_path", "/mnt/output"),
                       ("--calib_file", "/mnt/calibration")):
        if flag in args:
            value = args[args.index(flag) + 1]
            if not _within(posixpath.normpath(value), root):
                broken.append(f"{flag} {value} leaves {root}")
            if any(len(part.encode()) > 255 for part in value.split("/")):
                broken.append(f"{flag} has a component over 255 bytes")
    paths = [mount["mountPath"] for mount in container["volumeMounts"]]
    for index, path in enumerate(paths):
        if path not in own_mounts:
            if path != posixpath.normpath(path) or not path.startswith(USER_MOUNT_ROOTS) or path == "/mnt/":
                broken.append(f"user mount at {path}")
            if any(len(part.encode()) > 255 for part in path.split("/")):
                broken.append(f"mount {path} has a component over 255 bytes")
        for other in paths[:index]:  # a QuantJob may nest its own volumes, nothing else
            a, b = posixpath.normpath(path), posixpath.normpath(other)
            if (a == b or ((other in own_mounts or path in own_mounts) and (_within(a, b) or _within(b, a)))):
                broken.append(f"mounts {other} and {path} overlap")
    for key, value in (template["metadata"].get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or (value.startswith("localhost/") and value != "localhost/")):
            broken.append(f"annotation {key}: {value}")
        if "seccomp.security.alpha.kubernetes.io" in key and value != "runtime/default":
            broken.append(f"annotation {key}: {value}")
        if key.startswith("io.kubernetes.cri-o."):
            broken.append(f"annotation {key}")
    for side, values in (container.get("resources") or {}).items():
        for key, value in values.items():
            if not key.isascii() or "\x00" in key or len(key) > 253:
                broken.append(f"resources.{side} key {key[:40]!r}")
            if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d{1,2})?", value):
                broken.append(f"resources.{side}.{key}: {value[:40]!r}")
    if (container.get("resources") or {}).get("limits", {}).get("memory") == "1":
        broken.append("the device resource replaced the memory limit")
    for toleration in pod.get("tolerations", []):
        seconds = toleration.get("tolerationSeconds")
        if seconds is not None and not INT64[0] <= seconds <= INT64[1]:
            broken.append(f"tolerationSeconds {seconds}")
    for child in children:
        if child["kind"] == "ConfigMap" and sum(len(v.encode()) for v in child.get("data", {}).values()) > 1 << 20:
            broken.append(f"ConfigMap {child['metadata']['name']} over 1 MiB")
    return broken


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
            assert re.match(r"^[A-Za-z_][\w.\[\]/-]*: ", line), line  # map keys may hold "/"
    event("admitted" if admitted else "refused by the webhook" if reached else "refused by the API server")
    if not admitted:
        return
    resolution = review_quantjob(sent)
    assert resolution.job is not None
    children = build_children(resolution.job, resolution, Settings(), "ml")
    broken = _pod_guarantees(children)
    assert not broken, broken
    for child in children:
        if child["kind"] in BUILT_IN:  # custom resources (a gang's PodGroup) have no schema here
            kubernetes_validate.validate(child, KUBERNETES_VERSION, strict=True)
    job = next(child for child in children if child["kind"] == "Job")
    config_text = next(child["data"][CONFIG_FILE] for child in children
                       if child["kind"] == "ConfigMap" and CONFIG_FILE in child.get("data", {}))
    failures = _worker_preflight(job, config_text, tmp_path_factory.mktemp("pod"))
    assert not failures, failures
