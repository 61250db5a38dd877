"""The validating webhook: AdmissionReviews posted over HTTP to kopf's webhook server (kmock for discovery)."""

from __future__ import annotations

import base64
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import pytest_asyncio
import trustme
from emulator import eventually, free_port, quantjob_manifest, stored

from quantjob.operator.admission import VALIDATE_ID, build_webhook_server
from quantjob.operator.certificates import service_hostnames
from quantjob.operator.settings import WebhookSettings

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

W8A8_LAYER_WISE = {"apiversion": "modelslim_v1", "spec": {"runner": "layer_wise", "process": [
    {"type": "linear_quant", "qconfig": {
        "act": {"scope": "per_tensor", "dtype": "int8", "symmetric": False, "method": "minmax"},
        "weight": {"scope": "per_channel", "dtype": "int8", "symmetric": True, "method": "minmax"}},
     "include": ["*"]}], "save": [{"type": "ascendv1_saver"}]}}


def review(obj: dict[str, Any], operation: str = "CREATE", old: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "operation": operation,
        "kind": {"group": "quantjob.io", "version": "v1alpha1", "kind": "QuantJob"},
        "resource": {"group": "quantjob.io", "version": "v1alpha1", "resource": "quantjobs"},
        "namespace": "ml", "name": obj["metadata"].get("name"), "userInfo": {"username": "alice"},
        "object": obj, "oldObject": old, "dryRun": False}}


def with_spec(name: str = "qwen2-w8a8", drop: tuple[str, ...] = (), **spec: Any) -> dict[str, Any]:
    body = quantjob_manifest(name, count=spec.pop("count", 2))
    body["spec"].update(spec)
    for key in drop:
        body["spec"].pop(key)
    return body


@pytest_asyncio.fixture()
async def webhook(cluster: kmock.KubernetesEmulator, start_operator: Any) -> Any:
    """POST an AdmissionReview; returns its ``response``. The operator also registers the webhook."""
    port = free_port()
    settings = {"webhook": {"enabled": True, "tls": "insecure", "listen_addr": "127.0.0.1", "port": port,
                            "service": "quantjob-webhook", "namespace": "quantjob-system"}}
    async with start_operator(**settings), aiohttp.ClientSession() as session:
        async def post(payload: dict[str, Any]) -> dict[str, Any]:
            async with session.post(f"http://127.0.0.1:{port}/{VALIDATE_ID}", json=payload) as response:
                assert response.status == 200, await response.text()
                answer = await response.json()
            assert answer["response"]["uid"] == payload["request"]["uid"]
            return dict(answer["response"])
        yield post


async def test_valid_quantjob_is_allowed(webhook: Any) -> None:
    response = await webhook(review(with_spec()))
    assert response["allowed"] is True
    assert not response.get("warnings")


@pytest.mark.parametrize("body, path", [
    (with_spec(config=W8A8_LAYER_WISE, drop=("quantType",)), "spec.config.spec.runner"),
    (with_spec(devices={"type": "npu", "count": 0}), "spec.devices.count"),
    (with_spec(devices={"type": "tpu", "count": 2}), "spec.devices.type"),
    (with_spec(model={"pvc": "models", "path": "/abs/Qwen2"}), "spec.model.path"),
    (with_spec(config=W8A8_LAYER_WISE), "spec.quantType"),
    (with_spec(config={**W8A8_LAYER_WISE, "spec": {**W8A8_LAYER_WISE["spec"], "runner": "auto", "process": [
        {"type": "gptq"}]}}, drop=("quantType",)), "spec.config.spec.process[0]"),
    (with_spec(name="q" * 62), "metadata.name"),
    (with_spec(name="7b-first"), "metadata.name"),
])
async def test_each_rule_denies_with_its_path(webhook: Any, body: dict[str, Any], path: str) -> None:
    response = await webhook(review(body))
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert path in response["status"]["message"], response["status"]["message"]


async def test_warnings_are_returned(webhook: Any) -> None:
    config = {**W8A8_LAYER_WISE, "spec": {**W8A8_LAYER_WISE["spec"], "runner": "dp_layer_wise"}}
    response = await webhook(review(with_spec(config=config, drop=("quantType",), count=1)))
    assert response["allowed"] is True
    assert any("spec.config.spec.runner" in w and "falling back to layer_wise" in w for w in response["warnings"])


async def test_spec_is_immutable_once_the_job_exists(webhook: Any) -> None:
    old = with_spec()
    new = with_spec(devices={"type": "npu", "count": 4})
    assert (await webhook(review(new, "UPDATE", old)))["allowed"] is True  # no Job yet: allowed

    old["status"] = {"job": "qwen2-w8a8", "phase": "Running"}
    response = await webhook(review(new, "UPDATE", old))
    assert response["allowed"] is False
    assert "spec.devices" in response["status"]["message"] and "immutable" in response["status"]["message"]

    relabelled = with_spec()
    relabelled["metadata"]["labels"] = {"team": "a"}
    assert (await webhook(review(relabelled, "UPDATE", old)))["allowed"] is True  # metadata may change


async def test_operator_registers_the_webhook_by_service_reference(cluster: kmock.KubernetesEmulator,
                                                                   webhook: Any) -> None:
    resource = "admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    registered = await eventually(lambda: stored(cluster, resource, "quantjob.io", namespace=None))
    (hook,) = registered["webhooks"]
    assert hook["clientConfig"]["service"] == {"name": "quantjob-webhook", "namespace": "quantjob-system",
                                               "port": 443, "path": f"/{VALIDATE_ID}"}
    assert "url" not in hook["clientConfig"]
    assert hook["rules"][0]["resources"] == ["quantjobs"] and hook["failurePolicy"] == "Fail"


async def _serve_once(server: Any, port: int, trust: Callable[[dict[str, Any]], ssl.SSLContext],
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start ``server`` with a trivial webhook function and POST once over HTTPS, trusting what
    ``trust(client_config)`` trusts; returns (client config, answer)."""
    async def fn(request: Any, **_: Any) -> dict[str, Any]:
        return {"response": {"uid": request["request"]["uid"], "allowed": True}}

    configs = server(fn)
    config = dict(await configs.__anext__())
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust(config))) as session, \
                session.post(f"https://127.0.0.1:{port}/{VALIDATE_ID}", json=review(with_spec()),
                             server_hostname="quantjob-webhook.quantjob-system.svc") as response:
            answer = await response.json()
    finally:
        await configs.aclose()
    return config, answer


async def test_self_signed_tls_without_cert_manager(tmp_path: Path) -> None:
    port = free_port()
    server = build_webhook_server(WebhookSettings(tls="self-signed", listen_addr="127.0.0.1", port=port),
                                  scratch=tmp_path)

    def trust_ca_bundle(config: dict[str, Any]) -> ssl.SSLContext:  # what the API server trusts
        return ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode())

    config, answer = await _serve_once(server, port, trust_ca_bundle)
    assert answer["response"]["allowed"] is True
    assert config["service"]["name"] == "quantjob-webhook" and "url" not in config


async def test_cert_manager_files_tls(tmp_path: Path) -> None:
    authority = trustme.CA()
    leaf = authority.issue_cert(*service_hostnames("quantjob-webhook", "quantjob-system"))
    leaf.cert_chain_pems[0].write_to_path(tmp_path / "tls.crt")
    leaf.private_key_pem.write_to_path(tmp_path / "tls.key")
    authority.cert_pem.write_to_path(tmp_path / "ca.crt")  # cert-manager's Secret carries ca.crt
    port = free_port()
    server = build_webhook_server(WebhookSettings(tls="files", cert_dir=str(tmp_path), listen_addr="127.0.0.1",
                                                  port=port))
    def trust_authority(config: dict[str, Any]) -> ssl.SSLContext:
        context = ssl.create_default_context()
        authority.configure_trust(context)
        return context

    config, answer = await _serve_once(server, port, trust_authority)
    assert answer["response"]["allowed"] is True
    assert base64.b64decode(config["caBundle"]) == (tmp_path / "ca.crt").read_bytes()


async def test_missing_certificate_files_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tls.crt.*QUANTJOB_WEBHOOK_TLS=self-signed"):
        build_webhook_server(WebhookSettings(tls="files", cert_dir=str(tmp_path)))
