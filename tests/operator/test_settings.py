"""Operator settings from the environment and flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quantjob.cli import build_parser
from quantjob.cli.operator import overrides_from
from quantjob.operator.settings import SettingsError, load_settings


def test_defaults_watch_the_whole_cluster() -> None:
    settings = load_settings({})
    assert settings.cluster_wide and settings.namespaces == []
    assert settings.resource_name("npu", None) == "huawei.com/Ascend910"
    assert settings.resource_name("cuda", None) == "nvidia.com/gpu"
    assert settings.resource_name("cpu", None) is None
    assert settings.resource_name("npu", "huawei.com/Ascend910B3") == "huawei.com/Ascend910B3"
    assert settings.npu_runtime_class is None  # MindCluster installs no RuntimeClass: none unless configured
    assert settings.gang_scheduling == "none" and settings.webhook.failure_policy == "Ignore"
    assert settings.progress_reporting and not settings.network_policy


def test_environment() -> None:
    settings = load_settings({
        "QUANTJOB_NAMESPACES": "ml, team-b", "QUANTJOB_WORKER_IMAGE": "r/w:1", "QUANTJOB_LOG_FORMAT": "json",
        "QUANTJOB_NPU_RESOURCE_NAME": "huawei.com/Ascend910B4", "QUANTJOB_NPU_RUNTIME_CLASS": "",
        "QUANTJOB_WEBHOOK_PORT": "8443", "QUANTJOB_WEBHOOK_TLS": "self-signed", "POD_NAMESPACE": "ops"})
    assert settings.namespaces == ["ml", "team-b"] and not settings.cluster_wide
    assert settings.worker_image == "r/w:1" and settings.log_format == "json"
    assert settings.npu_resource_name == "huawei.com/Ascend910B4" and settings.npu_runtime_class is None
    assert settings.webhook.port == 8443 and settings.webhook.tls == "self-signed"
    assert settings.webhook.namespace == "ops"


def test_new_settings_from_the_environment() -> None:
    settings = load_settings({
        "QUANTJOB_NPU_RUNTIME_CLASS": "ascend", "QUANTJOB_GANG_SCHEDULING": "volcano",
        "QUANTJOB_VOLCANO_SCHEDULER": "volcano-npu", "QUANTJOB_RESYNC_SECONDS": "10",
        "QUANTJOB_PROGRESS_REPORTING": "false", "QUANTJOB_NETWORK_POLICY": "true",
        "QUANTJOB_ALLOW_TRUST_REMOTE_CODE": "false", "QUANTJOB_ALLOW_CUSTOM_IMAGE": "false",
        "QUANTJOB_ENV_ALLOW": "HCCL_*, ASCEND_*", "QUANTJOB_ENV_DENY": "LD_*",
        "QUANTJOB_WEBHOOK_FAILURE_POLICY": "Fail",
        "QUANTJOB_POD_DEFAULTS": "schedulerName: volcano-npu\nsupplementalGroups: [1001]\n"
                                 "volumes: [{name: driver, hostPath: {path: /usr/local/Ascend/driver}}]\n"
                                 "volumeMounts: [{name: driver, mountPath: /usr/local/Ascend/driver, readOnly: true}]\n"
                                 "env: {ASCEND_GLOBAL_LOG_LEVEL: '3'}"})
    assert settings.npu_runtime_class == "ascend" and settings.gang_scheduling == "volcano"
    assert settings.volcano_scheduler == "volcano-npu" and settings.resync_seconds == 10
    assert not settings.progress_reporting and settings.network_policy
    assert not settings.allow_trust_remote_code and not settings.allow_custom_image
    assert settings.env_allow == ["HCCL_*", "ASCEND_*"] and settings.env_deny == ["LD_*"]
    assert settings.webhook.failure_policy == "Fail"
    assert settings.pod_defaults.supplementalGroups == [1001]
    assert settings.pod_defaults.volumes[0]["hostPath"] == {"path": "/usr/local/Ascend/driver"}
    assert settings.pod_defaults.env == {"ASCEND_GLOBAL_LOG_LEVEL": "3"}


def test_pod_defaults_file_flag(tmp_path: Path) -> None:
    path = tmp_path / "defaults.yaml"
    path.write_text("nodeSelector: {accelerator-type: module-910b-8}\n")
    args = build_parser().parse_args(["operator", "--pod-defaults", str(path), "--gang-scheduling", "coscheduling",
                                      "--network-policy", "true", "--env-deny", "LD_*,PYTHON*"])
    settings = load_settings({}, overrides_from(args))
    assert settings.pod_defaults.nodeSelector == {"accelerator-type": "module-910b-8"}
    assert settings.gang_scheduling == "coscheduling" and settings.network_policy
    assert settings.env_deny == ["LD_*", "PYTHON*"]


def test_flags_override_the_environment() -> None:
    args = build_parser().parse_args(["operator", "-A", "--log-format", "json", "--webhook-port", "9000",
                                      "--no-webhook", "--worker-image", "flag:1"])
    settings = load_settings({"QUANTJOB_NAMESPACES": "ml", "QUANTJOB_WORKER_IMAGE": "env:1"}, overrides_from(args))
    assert settings.cluster_wide and settings.worker_image == "flag:1"
    assert settings.webhook.port == 9000 and settings.webhook.enabled is False
    args = build_parser().parse_args(["operator", "-n", "a", "-n", "b"])
    assert load_settings({}, overrides_from(args)).namespaces == ["a", "b"]


@pytest.mark.parametrize("environ, named", [
    ({"QUANTJOB_LOG_FORMAT": "yaml"}, "QUANTJOB_LOG_FORMAT"),
    ({"QUANTJOB_WEBHOOK_PORT": "http"}, "QUANTJOB_WEBHOOK_PORT"),
    ({"QUANTJOB_MASTER_PORT": "70000"}, "QUANTJOB_MASTER_PORT"),
    ({"QUANTJOB_GANG_SCHEDULING": "yunikorn"}, "QUANTJOB_GANG_SCHEDULING"),
    ({"QUANTJOB_NPU_RUNTIME_CLASS": "Ascend_RT"}, "QUANTJOB_NPU_RUNTIME_CLASS"),
    ({"QUANTJOB_POD_DEFAULTS": "volumes: [{name: model, emptyDir: {}}]"}, "QUANTJOB_POD_DEFAULTS"),
    ({"QUANTJOB_POD_DEFAULTS": "{unclosed"}, "QUANTJOB_POD_DEFAULTS"),
    ({"QUANTJOB_WEBHOOK_FAILURE_POLICY": "ignore"}, "QUANTJOB_WEBHOOK_FAILURE_POLICY"),
])
def test_bad_values_name_their_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(environ)


def test_operator_command_reports_bad_settings() -> None:
    result = subprocess.run([sys.executable, "-m", "quantjob.cli", "operator"], capture_output=True, text=True,
                            env={"QUANTJOB_LOG_FORMAT": "yaml", "PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 2 and "QUANTJOB_LOG_FORMAT" in result.stderr


def test_operator_modules_load_without_torch() -> None:
    code = ("import sys, quantjob.operator.main, quantjob.operator.admission, quantjob.cli.render, "
            "quantjob.worker.progress_k8s; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'transformers'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
