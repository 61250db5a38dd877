"""Issue 27 (Hardening II, items 1-8) and issue 26 (items 10, 11): QuantJobs that left their volumes,
ran user code past the policy switches, loosened the pod's confinement or reached the API server
unchecked. Each case was admitted before; now ``quantjob validate`` and the webhook refuse it, with
the same field. Their neighbours that are fine stay admitted."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import quantjob_manifest

from quantjob.api import kube_rules
from quantjob.api.pod_layout import canonical, under
from quantjob.cli.validate import validate_text
from quantjob.operator.admission import evaluate
from quantjob.operator.builders import build_children
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import PodDefaults, Settings

ROOT = Path(__file__).resolve().parents[2]


def job(name: str = "qwen2-w8a8", metadata: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body = quantjob_manifest(name, count=spec.pop("count", 2), **spec)
    body["metadata"].pop("uid")
    if metadata is not None:
        body["metadata"] = metadata
    return body


def pod(**fields: Any) -> dict[str, Any]:
    return {"pod": fields}


def mount(path: str, **extra: Any) -> dict[str, Any]:
    return pod(volumes=[{"name": "extra", "emptyDir": {}}],
               volumeMounts=[{"name": "extra", "mountPath": path, **extra}])


def verdicts(body: dict[str, Any], settings: Settings | None = None) -> tuple[int, str, list[str]]:
    """(validate's exit code, its output, the webhook's errors)."""
    out = io.StringIO()
    code = validate_text("job.yaml", yaml.safe_dump(body, sort_keys=False, allow_unicode=True), None, out)
    return code, out.getvalue(), evaluate("CREATE", body, None, settings).errors


BIG_CONFIG = {"apiversion": "modelslim_v1", "notes": "x" * 1_100_000, "spec": {"process": [
    {"type": "linear_quant", "qconfig": {"weight": {"scope": "per_channel", "dtype": "int8", "symmetric": True,
                                                    "method": "minmax"}}, "include": ["*"]}],
    "save": [{"type": "ascendv1_saver"}]}}

REFUSED = [
    # 27.1: $(VAR) is expanded by the kubelet in args and env
    ("27.1", job(output={"pvc": "quantized", "path": "$(X)"}, env={"X": "../../tmp/x"}), "spec.output.path"),
    ("27.1", job(calibration={"path": "$(T)"}, env={"T": "../../var/run/secrets/x"}), "spec.calibration.path"),
    ("27.1", job(model={"pvc": "models", "path": "a/$(HOME)/b"}), "spec.model.path"),
    ("27.1", job(model={"pvc": "models", "path": "Qwen2-7B", "modelType": "$(X)"}), "spec.model.modelType"),
    ("27.1", job(env={"HCCL_SOCKET_IFNAME": "$(MASTER_ADDR)"}), "spec.env.HCCL_SOCKET_IFNAME"),
    ("27.1", job(**mount("/mnt/extra", subPath="$(X)")), "spec.pod.volumeMounts[0].subPath"),
    # 27.2: '..' and non-canonical mount paths
    ("27.2", job(**mount("/x/../etc/quantjob")), "spec.pod.volumeMounts[0].mountPath"),
    ("27.2", job(**mount("/mnt/x/../model")), "spec.pod.volumeMounts[0].mountPath"),
    ("27.2", job(**mount("/mnt//extra")), "spec.pod.volumeMounts[0].mountPath"),
    ("27.2", job(**mount("/mnt/extra/.")), "spec.pod.volumeMounts[0].mountPath"),
    ("27.2", job(**mount("/mnt/extra/")), "spec.pod.volumeMounts[0].mountPath"),
    # 27.3: the worker's code and the system's files
    ("27.3", job(**mount("/opt/quantjob/bin")), "spec.pod.volumeMounts[0].mountPath"),
    ("27.3", job(**mount("/usr/bin")), "spec.pod.volumeMounts[0].mountPath"),
    ("27.3", job(**mount("/usr/local/bin/quantjob-worker-entrypoint", subPath="x")),
     "spec.pod.volumeMounts[0].mountPath"),
    ("27.3", job(**mount("/usr/local/Ascend")), "spec.pod.volumeMounts[0].mountPath"),
    ("27.3", job(**mount("/etc/ld.so.preload")), "spec.pod.volumeMounts[0].mountPath"),
    ("27.3", job(**mount("/")), "spec.pod.volumeMounts[0].mountPath"),
    ("27.3", job(**mount("/mnt")), "spec.pod.volumeMounts[0].mountPath"),  # holds the worker's own mounts
    ("27.2", job(**pod(volumes=[{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}],
                       volumeMounts=[{"name": "a", "mountPath": "/data/x"}, {"name": "b", "mountPath": "/data/y/../x"}])),
     "spec.pod.volumeMounts[1].mountPath"),
    # 27.4: environment that runs code
    *[("27.4", job(env={name: "/mnt/model/x"}), f"spec.env.{name}")
      for name in ("BASH_ENV", "ENV", "PATH", "ASCEND_HOME", "LD_PRELOAD", "LD_AUDIT", "PYTHONPATH", "PYTHONHOME",
                   "PYTHONSTARTUP", "SHELLOPTS", "ASCEND_CUSTOM_OPP_PATH", "ASCEND_OPP_PATH", "ASCEND_TOOLKIT_HOME",
                   "NCCL_NET_PLUGIN", "CUDA_INJECTION64_PATH", "OPENSSL_CONF", "GCONV_PATH", "BASH_FUNC_f%%", "IFS",
                   "PS4", "ld_preload", "ASCEND_AICPU_PATH", "X_PRELOAD", "TBE_LIBRARY", "ASCEND_HOME_PATH")],
    # 27.5: confinement annotations
    ("27.5", job(**pod(annotations={"container.apparmor.security.beta.kubernetes.io/worker": "unconfined"})),
     "spec.pod.annotations.container.apparmor.security.beta.kubernetes.io/worker"),
    ("27.5", job(**pod(annotations={"seccomp.security.alpha.kubernetes.io/pod": "unconfined"})),
     "spec.pod.annotations.seccomp.security.alpha.kubernetes.io/pod"),
    ("27.5", job(**pod(annotations={"container.seccomp.security.alpha.kubernetes.io/worker": "localhost/x"})),
     "spec.pod.annotations.container.seccomp.security.alpha.kubernetes.io/worker"),
    ("27.5", job(**pod(annotations={"io.kubernetes.cri-o.Devices": "/dev/sda"})),
     "spec.pod.annotations.io.kubernetes.cri-o.Devices"),
    # 27.6: fields that reached the API server unchecked
    *[("27.6", job(devices={"type": "npu", "count": 2, "resourceName": name}), "spec.devices.resourceName")
      for name in ("memory", "cpu", "ephemeral-storage", "huawei.com/Ascend\x00910", "huawei.com/Ascénd",
                   "huawei.com/" + "a" * 5000, "kubernetes.io/npu", "requests.huawei.com/x", "hugepages-2Mi")],
    ("27.6", job(**pod(volumes=[{"name": "c", "configMap": {}}])), "spec.pod.volumes[0].configMap.name"),
    ("27.6", job(**pod(volumes=[{"name": "c", "emptyDir": {"medium": "Disk"}}])),
     "spec.pod.volumes[0].emptyDir.medium"),
    ("27.6", job(**pod(volumes=[{"name": "c", "secret": {"secretName": "s", "items": [{"key": "k",
                                                                                         "path": "../x"}]}}])),
     "spec.pod.volumes[0].secret.items[0].path"),
    ("27.6", job(**pod(volumes=[{"name": "c", "configMap": {"name": "c", "defaultMode": 4096}}])),
     "spec.pod.volumes[0].configMap.defaultMode"),
    ("27.6", job(**pod(volumes=[{"name": "c", "persistentVolumeClaim": {"claimName": "c", "bogus": 1}}])),
     "spec.pod.volumes[0].persistentVolumeClaim.bogus"),
    ("27.6", job(**pod(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Near", "values": ["a"]}]}]}}})),
     ("spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
      ".matchExpressions[0].operator")),
    ("27.6", job(**pod(affinity={"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"a": "b"}}}]}})),
     "spec.pod.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey"),
    ("27.6", job(**pod(tolerations=[{"key": "k", "operator": "Exists", "effect": "NoExecute",
                                     "tolerationSeconds": 2 ** 63}])), "spec.pod.tolerations[0].tolerationSeconds"),
    ("27.6", job(**pod(annotations={"example.com/note": "x" * 262_200})), "spec.pod.annotations"),
    # 27.7: validate and the webhook agree
    ("27.7", job(metadata={"generateName": "q" * 58, "namespace": "ml"}, count=2000), "metadata.generateName"),
    ("27.7", job(metadata={"name": "qwen2-w8a8", "namespace": 5}), "metadata.namespace"),
    ("27.7", job(quantType=None, config=BIG_CONFIG), "spec.config"),
    # 27.8: path components over 255 bytes
    ("27.8", job(output={"pvc": "quantized", "path": "x" * 256}), "spec.output.path"),
    ("27.8", job(calibration={"path": "d/" + "é" * 128}), "spec.calibration.path"),
    ("27.8", job(**mount("/mnt/" + "x" * 256)), "spec.pod.volumeMounts[0].mountPath"),
    # 26.11: quantities decimal cannot hold
    ("26.11", job(shmSize="1e999999999"), "spec.shmSize"),
    ("26.11", job(resources={"limits": {"memory": "1e999999999"}}), "spec.resources.limits.memory"),
    ("26.11", job(resources={"requests": {"cpu": "1e999999999"}}), "spec.resources.requests.cpu"),
    ("26.11", job(resources={"requests": {"cpu": "1e-999999999"}}), "spec.resources.requests.cpu"),
    ("26.11", job(resources={"limits": {"memory": "9Ei"}}), "spec.resources.limits.memory"),
    ("26.11", job(**pod(volumes=[{"name": "c", "emptyDir": {"sizeLimit": "1e999999999"}}])),
     "spec.pod.volumes[0].emptyDir.sizeLimit"),
]


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    body["spec"] = {key: value for key, value in body["spec"].items() if value is not None}
    return body


@pytest.mark.parametrize(("item", "body", "field"), REFUSED,
                         ids=[f"{item}-{field.rsplit('.', 1)[-1]}-{index}" for index, (item, _, field)
                              in enumerate(REFUSED)])
def test_validate_and_the_webhook_refuse_it_naming_the_field(item: str, body: dict[str, Any], field: str) -> None:
    started = time.perf_counter()
    code, out, errors = verdicts(_clean(body))
    assert code == 1 and any(line.startswith(f"{field}:") for line in out.splitlines()), (item, out)
    assert errors and any(error.startswith(f"{field}:") for error in errors), (item, errors)
    assert time.perf_counter() - started < 5.0


ADMITTED = [
    job(**mount("/mnt/cache")),
    job(**mount("/data/ref", readOnly=True, subPath="a/b")),
    job(**mount("/srv")),
    job(**pod(volumes=[{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}],
              volumeMounts=[{"name": "a", "mountPath": "/data/a"}, {"name": "b", "mountPath": "/data/a/b"}])),
    job(env={"HCCL_SOCKET_IFNAME": "eth0", "ASCEND_GLOBAL_LOG_LEVEL": "1", "NCCL_DEBUG": "INFO", "X": "a$b"}),
    job(**pod(annotations={"container.apparmor.security.beta.kubernetes.io/worker": "runtime/default",
                           "seccomp.security.alpha.kubernetes.io/pod": "runtime/default",
                           "example.com/team": "a"})),
    job(devices={"type": "npu", "count": 2, "resourceName": "huawei.com/Ascend310P"}),
    job(**pod(volumes=[{"name": "c", "configMap": {"name": "c", "items": [{"key": "k.json", "path": "a/k.json"}],
                                                   "defaultMode": 0o444}},
                       {"name": "s", "secret": {"secretName": "s", "optional": True}},
                       {"name": "e", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                       {"name": "p", "projected": {"sources": [{"downwardAPI": {"items": [
                           {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]}},
                       {"name": "t", "ephemeral": {"volumeClaimTemplate": {"spec": {
                           "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}}}],
              volumeMounts=[{"name": "c", "mountPath": "/mnt/c"}, {"name": "t", "mountPath": "/data/t"}])),
    job(**pod(affinity={"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                           "labelSelector": {"matchExpressions": [
                                               {"key": "app", "operator": "In", "values": ["q"]}]}}}]},
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "npu-count", "operator": "Gt", "values": ["3"]}]}]}}},
        tolerations=[{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2 ** 63 - 1}])),
    job(shmSize="8Gi", resources={"requests": {"cpu": "500m", "memory": "1e3"}, "limits": {"memory": "64Gi"}}),
    job(metadata={"generateName": "q" * 40 + "-", "namespace": "ml"}),
]


@pytest.mark.parametrize("body", ADMITTED, ids=range(len(ADMITTED)))
def test_their_neighbours_stay_admitted(body: dict[str, Any]) -> None:
    code, out, errors = verdicts(body)
    assert code == 0 and not errors, (out, errors)


def test_a_mount_inside_or_over_a_pod_default_is_refused_in_canonical_form() -> None:
    """27.2: ``/usr/local/Ascend/driver/.``, ``/usr//local/...`` and paths under a default mount
    passed the exact string compare against the operator's pod defaults."""
    defaults = PodDefaults.model_validate({
        "volumes": [{"name": "driver", "hostPath": {"path": "/usr/local/Ascend/driver"}},
                    {"name": "tools", "emptyDir": {}}],
        "volumeMounts": [{"name": "driver", "mountPath": "/usr/local/Ascend/driver", "readOnly": True},
                         {"name": "tools", "mountPath": "/mnt/tools"}]})
    settings = Settings(pod_defaults=defaults)
    for path in ("/mnt/tools/sub", "/mnt/tools"):
        errors = evaluate("CREATE", job(**mount(path)), None, settings).errors
        assert any(e.startswith("spec.pod.volumeMounts[0].mountPath:") and "pod defaults" in e for e in errors), \
            errors
    for path in ("/usr/local/Ascend/driver/.", "/usr//local/Ascend/driver", "/usr/local/Ascend/driver/lib64"):
        assert evaluate("CREATE", job(**mount(path)), None, settings).errors
    assert not evaluate("CREATE", job(**mount("/mnt/tools2")), None, settings).errors


def test_paths_are_compared_in_canonical_form() -> None:
    assert canonical("/x/../etc/quantjob") == "/etc/quantjob" and canonical("//usr//bin/.") == "/usr/bin"
    assert under("/x/../etc/quantjob", "/etc/quantjob") and under("/etc/quantjob/a", "/x/../etc")
    assert not under("/etc/quantjob2", "/etc/quantjob")


def test_every_quantity_is_parsed_without_raising() -> None:
    """26.11: ``decimal.Overflow`` came out of ``parse_quantity``; now out of range is an answer."""
    for value in ("1e999999999", "1E-999999999", "9" * 99 + "E", "1e+99", "9Ei", "1" * 200):
        assert kube_rules.parse_quantity(value) is None and kube_rules.quantity(value), value
    assert kube_rules.parse_quantity("8Ei") is None and kube_rules.parse_quantity("7Ei") == 7 * 2 ** 60
    assert kube_rules.parse_quantity("1e3") == 1000 and kube_rules.parse_quantity("500m") * 2 == 1


def test_admitted_args_and_env_reach_the_pod_as_checked() -> None:
    """27.1: what the pod runs holds no ``$(`` the kubelet would expand."""
    resolution = review_quantjob(job(env={"HCCL_SOCKET_IFNAME": "eth0"}))
    assert resolution.ok and resolution.job is not None
    children = build_children(resolution.job, resolution, Settings(), "ml")
    container = next(c for c in children if c["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]
    assert not any("$(" in arg for arg in container["args"])
    assert not any("$(" in item.get("value", "") for item in container["env"])


# --- 26.10: hostile YAML through the CLI -------------------------------------------------------------

def _bomb() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


HOSTILE = {"alias-bomb": (_bomb(), "aliases are expanded"),
           "deep": ("spec: " + "[" * 20000 + "]" * 20000 + "\n", "nest more than 64 deep"),
           "size": ("a:\n" + "  - x\n" * 700_000, "larger than the")}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("command", [["render", "-f"], ["validate"],
                                     ["quantize", "--model_path", "/nonexistent/m", "--save_path",
                                      "/nonexistent/o", "--config_path"]], ids=["render", "validate", "quantize"])
def test_hostile_yaml_is_one_line_naming_the_file(tmp_path: Path, kind: str, command: list[str]) -> None:
    text, needle = HOSTILE[kind]
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "quantjob.cli", *command, str(path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert time.perf_counter() - started < 60
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and any(str(path) in line and needle in line for line in lines), lines
    assert result.returncode == (1 if command == ["validate"] else 2), (result.returncode, lines)
    if command[0] != "validate":  # validate's contract: FILE:line: message, exit 1, like its other verdicts
        assert len(lines) == 1 and lines[0].startswith(f"quantjob: error: {path}"), lines
