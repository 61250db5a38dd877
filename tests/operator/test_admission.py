"""The validating webhook: AdmissionReviews posted over HTTP to kopf's webhook server (kmock for discovery)."""

from __future__ import annotations

import base64
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import pytest_asyncio
import trustme
from emulator import eventually, free_port, quantjob_manifest, stored

from quantjob.operator.admission import VALIDATE_ID, build_webhook_server, evaluate
from quantjob.operator.certificates import service_hostnames
from quantjob.operator.review import review_document
from quantjob.operator.settings import Settings, WebhookSettings

CONFIGURATIONS = "admissionregistration.k8s.io/v1/validatingwebhookconfigurations"

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


def webhook_poster(cluster: kmock.KubernetesEmulator, start_operator: Any, **overrides: Any) -> Any:
    """An async context manager: the operator with its webhook server; yields ``post(review) -> response``."""
    port = free_port()
    settings = {"webhook": {"enabled": True, "tls": "insecure", "listen_addr": "127.0.0.1", "port": port,
                            "service": "quantjob-webhook", "namespace": "quantjob-system"}, **overrides}
    # created by the chart (deploy/quantjob.yaml); the operator only patches it
    cluster.objects[kmock.resource(CONFIGURATIONS), None, "quantjob.io"] = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "quantjob.io"}, "webhooks": []}

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[Any]:
        async with start_operator(threaded=True, **settings), aiohttp.ClientSession() as session:
            async def post(payload: dict[str, Any]) -> dict[str, Any]:
                async with session.post(f"http://127.0.0.1:{port}/{VALIDATE_ID}", json=payload) as response:
                    assert response.status == 200, await response.text()
                    answer = await response.json()
                assert answer["response"]["uid"] == payload["request"]["uid"]
                return dict(answer["response"])
            yield post
    return running()


@pytest_asyncio.fixture()
async def webhook(cluster: kmock.KubernetesEmulator, start_operator: Any) -> Any:
    """POST an AdmissionReview; returns its ``response``. The operator also registers the webhook."""
    async with webhook_poster(cluster, start_operator) as post:
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
    # issue 14.4: every variable the operator or the worker reads is reserved
    (with_spec(env={"QUANTJOB_API_SERVER": "http://evil.example"}), "spec.env.QUANTJOB_API_SERVER"),
    (with_spec(env={"KUBERNETES_SERVICE_HOST": "evil.example"}), "spec.env.KUBERNETES_SERVICE_HOST"),
    (with_spec(env={"HF_HUB_OFFLINE": "0"}), "spec.env.HF_HUB_OFFLINE"),
    (with_spec(env={"ASCEND_VISIBLE_DEVICES": "0-7"}), "spec.env.ASCEND_VISIBLE_DEVICES"),
    (with_spec(env={"MASTER_ADDR": "10.0.0.1"}), "spec.env.MASTER_ADDR"),
    # issue 14.9: values the API server would refuse when the Job is created
    (with_spec(env={"1BAD": "x"}), "spec.env.1BAD"),
    (with_spec(resources={"requests": {"memory": "64GB"}}), "spec.resources.requests.memory"),
    (with_spec(resources={"limits": {"cpu": "four"}}), "spec.resources.limits.cpu"),
    (with_spec(resources={"requests": {"cpu": "8"}, "limits": {"cpu": "4"}}), "spec.resources.requests.cpu"),
    (with_spec(resources={"limits": {"gpus": "1"}}), "spec.resources.limits.gpus"),
    (with_spec(image="Registry.local/Worker:1"), "spec.image"),
    (with_spec(image="worker:1 --privileged"), "spec.image"),
    (with_spec(queueName="team a"), "spec.queueName"),
    (with_spec(queueName="q" * 64), "spec.queueName"),
    (with_spec(pod={"nodeSelector": {"accelerator type": "x"}}), "spec.pod.nodeSelector"),
    (with_spec(pod={"tolerations": [{"operator": "Equal", "value": "x"}]}), "spec.pod.tolerations[0].operator"),
    (with_spec(pod={"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}), "spec.pod.volumes[0].hostPath"),
    (with_spec(pod={"volumes": [{"name": "x", "emptyDir": {}}],
                    "volumeMounts": [{"name": "x", "mountPath": "/mnt/output/x"}]}),
     "spec.pod.volumeMounts[0].mountPath"),
    (with_spec(pod={"labels": {"quantjob.io/name": "other"}}), "spec.pod.labels.quantjob.io/name"),
    (with_spec(scheduling={"queue": "npu"}), "spec.scheduling.queue"),
    (with_spec(backoffLimit=3), "spec.backoffLimit"),
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


async def test_spec_is_immutable(webhook: Any) -> None:
    old = with_spec()
    new = with_spec(devices={"type": "npu", "count": 4})
    response = await webhook(review(new, "UPDATE", old))  # like the CRD's CEL rule: from the start
    assert response["allowed"] is False
    assert "spec.devices" in response["status"]["message"] and "immutable" in response["status"]["message"]


async def test_labels_only_update_is_allowed_once_the_job_exists(webhook: Any) -> None:
    """Issue 14.10: metadata may change on a running QuantJob (the object as the API server sends it)."""
    old = with_spec()
    old["metadata"].update(resourceVersion="1234", generation=1, creationTimestamp="2025-01-01T00:00:00Z",
                           managedFields=[{"manager": "kubectl", "operation": "Update", "apiVersion": "quantjob.io/v1alpha1",
                                           "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}])
    old["status"] = {"job": "qwen2-w8a8-a1", "phase": "Running", "attempt": 1, "readySummary": "2/2",
                     "conditions": [{"type": "Running", "status": "True"}]}
    relabelled = {**old, "metadata": {**old["metadata"], "labels": {"team": "a"},
                                      "annotations": {"note": "checked"}}}
    response = await webhook(review(relabelled, "UPDATE", old))
    assert response["allowed"] is True, response


async def test_operator_registers_the_webhook_by_service_reference(cluster: kmock.KubernetesEmulator,
                                                                   webhook: Any) -> None:
    registered = await eventually(lambda: (stored(cluster, CONFIGURATIONS, "quantjob.io", namespace=None) or {})
                                  .get("webhooks"))
    (hook,) = registered
    assert hook["clientConfig"]["service"] == {"name": "quantjob-webhook", "namespace": "quantjob-system",
                                               "port": 443, "path": f"/{VALIDATE_ID}"}
    assert "url" not in hook["clientConfig"]
    assert hook["rules"][0]["resources"] == ["quantjobs"] and hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert hook["failurePolicy"] == "Ignore"  # the CRD's rules and the reconcile hold while the operator is down
    # patched by name, never created (the operator may not create webhook configurations)
    assert not [r for r in cluster if r.method == "POST" and r.resource == kmock.resource(CONFIGURATIONS)]


async def test_operator_policy_settings_refuse_at_admission(cluster: kmock.KubernetesEmulator,
                                                           start_operator: Any) -> None:
    """Issue 14.16: an operator may forbid trustRemoteCode, spec.image and spec.env keys."""
    policy = {"allow_trust_remote_code": False, "allow_custom_image": False, "env_deny": ["LD_*", "PYTHON*"]}
    async with webhook_poster(cluster, start_operator, **policy) as post:
        remote = with_spec()
        remote["spec"]["model"]["trustRemoteCode"] = True
        for body, path in [(remote, "spec.model.trustRemoteCode"), (with_spec(image="mine:1"), "spec.image"),
                           (with_spec(env={"LD_PRELOAD": "/mnt/model/x.so"}), "spec.env.LD_PRELOAD"),
                           (with_spec(env={"PYTHONPATH": "/mnt/model"}), "spec.env.PYTHONPATH")]:
            response = await post(review(body))
            assert response["allowed"] is False and path in response["status"]["message"], (path, response)
        assert (await post(review(with_spec(env={"HCCL_SOCKET_IFNAME": "eth0"}))))["allowed"] is True


async def test_in_process_verdict_is_the_webhooks_and_validates(webhook: Any) -> None:
    """The webhook's decision is callable without HTTP (the fuzz test's entry), and ``quantjob
    validate`` judges a QuantJob the same way as a default operator's webhook."""
    remote = with_spec()
    remote["spec"]["model"]["trustRemoteCode"] = True
    bodies = [with_spec(), with_spec(name="7b"), with_spec(env={"QUANTJOB_NAME": "x"}), remote,
              with_spec(devices={"type": "npu", "count": 0})]
    for body in bodies:
        over_http = await webhook(review(body))
        verdict = evaluate("CREATE", body)
        assert verdict.allowed == over_http["allowed"], body
        if not verdict.allowed:
            assert verdict.message == over_http["status"]["message"]
        validated = review_document(body)
        assert validated.ok == verdict.allowed, body
    strict = evaluate("CREATE", remote, settings=Settings(allow_trust_remote_code=False))
    assert not strict.allowed and strict.errors == [
        ("spec.model.trustRemoteCode: this operator does not run a model's own Python code "
         "(QUANTJOB_ALLOW_TRUST_REMOTE_CODE=false); remove trustRemoteCode")]


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
