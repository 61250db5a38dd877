"""``quantjob render``: the example QuantJobs become objects that pass ``kubernetes-validate --strict``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from quantjob.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "quantjobs").glob("*.yaml"))
KUBERNETES_VERSION = "1.31"


def rendered(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict], str]:
    code = main(["render", *argv])
    out, err = capsys.readouterr()
    return code, [doc for doc in yaml.safe_load_all(out) if doc], err


def test_examples_include_npu4_and_cuda2() -> None:
    specs = [yaml.safe_load(path.read_text())["spec"]["devices"] for path in EXAMPLES]
    assert {"type": "npu", "count": 4} in [{k: d[k] for k in ("type", "count")} for d in specs]
    assert {"type": "cuda", "count": 2} in [{k: d[k] for k in ("type", "count")} for d in specs]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_rendered_object_passes_strict_validation(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, objects, err = rendered(capsys, "-f", str(example))
    assert code == 0, err
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Job"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


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
    assert len(objects) == 12 and {o["metadata"]["namespace"] for o in objects} == {"team-b"}


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
