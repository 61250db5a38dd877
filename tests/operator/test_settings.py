"""Operator settings from the environment and flags."""

from __future__ import annotations

import subprocess
import sys

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
    assert settings.npu_runtime_class == "ascend"


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
