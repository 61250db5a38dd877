"""``quantjob render``: the example QuantJobs become objects that pass ``kubernetes-validate --strict``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from quantjob.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "quantjobs").glob("*.yaml"))
POD_DEFAULTS = ROOT / "deploy" / "pod-defaults" / "ascend-driver-hostpath.yaml"
KUBERNETES_VERSION = "1.31"
BUILT_IN = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Job", "NetworkPolicy")
# PodGroups are custom resources without a schema here: their fields, as Volcano and the
# scheduler-plugins coscheduling plugin define them, are checked by name.
POD_GROUP_FIELDS = {"scheduling.volcano.sh/v1beta1": {"minMember", "queue", "priorityClassName", "minResources"},
                    "scheduling.x-k8s.io/v1alpha1": {"minMember", "scheduleTimeoutSeconds", "minResources"}}


def validate_strictly(obj: dict) -> None:
    if obj["kind"] == "PodGroup":
        assert set(obj["spec"]) <= POD_GROUP_FIELDS[obj["apiVersion"]], obj["spec"]
        assert isinstance(obj["spec"]["minMember"], int) and obj["spec"]["minMember"] >= 1
        return
    assert obj["kind"] in BUILT_IN, obj["kind"]
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def rendered(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict], str]:
    code = main(["render", *argv])
    out, err = capsys.readouterr()
    return code, [doc for doc in yaml.safe_load_all(out) if doc], err


def test_examples_include_npu4_cuda2_mindcluster_and_hami() -> None:
    specs = {path.stem: yaml.safe_load(path.read_text())["spec"] for path in EXAMPLES}
    devices = [{k: spec["devices"][k] for k in ("type", "count")} for spec in specs.values()]
    assert {"type": "npu", "count": 4} in devices and {"type": "cuda", "count": 2} in devices
    assert any(spec.get("scheduling", {}).get("gang") == "volcano" for spec in specs.values())  # MindCluster
    assert any(spec.get("pod", {}).get("schedulerName") == "hami-scheduler" for spec in specs.values())  # HAMi


OPTIONS = {
    "defaults": [],
    "runtime-class": ["--npu-runtime-class", "ascend"],
    "volcano": ["--gang-scheduling", "volcano"],
    "coscheduling": ["--gang-scheduling", "coscheduling"],
    "driver-host-paths": ["--pod-defaults", str(POD_DEFAULTS)],
    "network-policy": ["--network-policy"],
}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_rendered_object_passes_strict_validation(example: Path, option: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, objects, err = rendered(capsys, "-f", str(example), *OPTIONS[option])
    assert code == 0, err
    kinds = [o["kind"] for o in objects]
    assert kinds[:6] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ConfigMap", "Service"]
    assert kinds[-1] == "Job"
    for obj in objects:
        validate_strictly(obj)
    spec = yaml.safe_load(example.read_text())["spec"]
    pod = objects[-1]["spec"]["template"]["spec"]
    gang = spec.get("scheduling", {}).get("gang") or (option if option in ("volcano", "coscheduling") else "none")
    assert ("PodGroup" in kinds) == (gang != "none")
    if gang != "none":
        assert pod["schedulerName"] in ("volcano", "scheduler-plugins-scheduler")
    if option == "driver-host-paths":
        assert next(v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v) == "/usr/local/Ascend/driver"
        assert pod["securityContext"]["supplementalGroups"] == [1000]
    if option == "runtime-class" and spec["devices"]["type"] == "npu":
        assert pod["runtimeClassName"] == "ascend"
    if option == "network-policy":
        assert "NetworkPolicy" in kinds


def test_strict_validation_catches_a_bad_field() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
           "spec": {"completionMode": "Indexed", "template": {"spec": {"containers": [], "subdomian": "x"}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def test_invalid_quantjob_is_reported_with_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = yaml.safe_load(EXAMPLES[0].read_text())
    manifest["spec"]["devices"]["count"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    code, objects, err = rendered(capsys, "-f", str(path))
    assert code == 1 and objects == []
    assert f"{path}[0]: spec.devices.count" in err


def test_multi_document_stream_and_namespace_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = [yaml.safe_load(p.read_text()) for p in EXAMPLES[:2]]
    for doc in docs:
        doc["metadata"].pop("namespace")
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    code, objects, err = rendered(capsys, "-f", str(path), "--namespace", "team-b")
    assert code == 0, err
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Job"] == [
        f"{doc['metadata']['name']}-a1" for doc in docs]
    assert {o["metadata"]["namespace"] for o in objects} == {"team-b"}


def test_kubernetes_validate_cli_accepts_the_stream(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "quantjob.cli", "render", "-f", str(EXAMPLES[0])],
                         check=True, capture_output=True, text=True).stdout
    path = tmp_path / "objects.yaml"
    path.write_text(out)
    result = subprocess.run(["kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_manifests_pass_strict_validation() -> None:
    deploy = Path(__file__).resolve().parents[2] / "deploy" / "quantjob.yaml"  # the chart, rendered
    objects = [doc for doc in yaml.safe_load_all(deploy.read_text()) if doc]
    assert {o["kind"] for o in objects} >= {"Deployment", "ClusterRole", "Service", "ServiceAccount"}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
