"""charts/quantjob: renders offline with Helm's library, lints clean, every object passes strict
validation, the schema refuses bad values by name, and what it configures is what the operator reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from crd_schemas import BY_KIND
from render import CHART, DEPLOY, DEPLOY_FILES, NAMESPACE, ROOT, chart, deploy_text, render

from quantjob.operator import builders, rbac
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import ENVIRONMENT, load_settings

KUBERNETES_VERSION = "1.31"
ALL_VALUES = yaml.safe_load((Path(__file__).parent / "values-all.yaml").read_text(encoding="utf-8"))
CASES = {
    "defaults": {},
    "all-options": ALL_VALUES,
    "cert-manager-own-issuer": {"webhook": {"certManager": {"enabled": True}}},
    "no-webhook-no-metrics": {"webhook": {"enabled": False}, "metrics": {"enabled": False}},
    "namespaced": {"watchNamespaces": ["ml"]},
    "network-policy-gangs": {"worker": {"networkPolicy": True, "gangScheduling": "coscheduling"}},
}


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = of_kind(objects, kind)
    return found


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    """The operator container's env as the pod sees it (POD_NAMESPACE from the downward API)."""
    env: dict[str, str] = {}
    for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" in item:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, item
            env[item["name"]] = deployment["metadata"]["namespace"]
        else:
            env[item["name"]] = item["value"]
    return env


def test_chart_crd_is_the_generated_crd() -> None:
    with chart() as loaded:
        (crd,) = loaded.crds
    assert crd["filename"].endswith("crds/quantjob.io_quantjobs.yaml")  # Helm installs it before the templates
    assert (CHART / "crds" / "quantjob.io_quantjobs.yaml").read_bytes() == \
        (ROOT / "crds" / "quantjob.io_quantjobs.yaml").read_bytes(), \
        "charts/quantjob/crds/ differs from crds/: cp crds/quantjob.io_quantjobs.yaml charts/quantjob/crds/"


@pytest.mark.parametrize("values", [{}, ALL_VALUES], ids=["defaults", "all-options"])
def test_lint_is_clean(values: dict[str, Any]) -> None:
    report = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    serious = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error; 1 is info
    assert report["errors"] == [] and serious == [], report


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_every_rendered_object_passes_strict_validation(values: dict[str, Any]) -> None:
    objects, _ = render(values)
    assert objects
    for obj in objects:
        schema = BY_KIND.get((obj["apiVersion"], obj["kind"]))
        if schema is not None:
            jsonschema.validate(obj, schema)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_fails_on_a_template_typo() -> None:
    objects, _ = render({})
    deployment = the(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    objects, _ = render({"webhook": {"certManager": {"enabled": True}}})
    certificate = the(objects, "Certificate")
    certificate["spec"]["dnsName"] = ["x"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(certificate, BY_KIND[("cert-manager.io/v1", "Certificate")])


@pytest.mark.parametrize("values, field", [
    ({"metrics": {"prot": 8081}}, "prot"),                                    # misspelled key
    ({"watchNamespace": ["ml"]}, "watchNamespace"),                           # misspelled top-level key
    ({"worker": {"devices": {"npu": {"runtimeClass": "ascend"}}}}, "runtimeClass"),
    ({"webhook": {"port": "https"}}, "/webhook/port"),                        # mistyped
    ({"operator": {"healthPort": 0}}, "/operator/healthPort"),                # out of range
    ({"operator": {"logFormat": "yaml"}}, "/operator/logFormat"),             # not one of the choices
    ({"watchNamespaces": "ml"}, "/watchNamespaces"),                          # a string, not a list
    ({"watchNamespaces": ["ML"]}, "/watchNamespaces/0"),                      # not a namespace name
    ({"worker": {"devices": {"npu": {"resourceName": "Ascend910"}}}}, "/worker/devices/npu/resourceName"),
    ({"worker": {"extraVolumeMounts": [{"name": "drv"}]}}, "/worker/extraVolumeMounts/0"),  # no mountPath
    ({"metrics": {"enabled": "yes"}}, "/metrics/enabled"),
    ({"webhook": {"certManager": {"duration": "1 year"}}}, "/webhook/certManager/duration"),
])
def test_schema_refuses_bad_values_naming_the_field(values: dict[str, Any], field: str) -> None:
    with chart() as loaded:
        with pytest.raises(helm_python.HelmValuesError) as refused:
            loaded.validate_schema(values)
        assert field in str(refused.value), str(refused.value)
        with pytest.raises(helm_python.HelmValuesError):  # an install (render) is refused the same way
            loaded.render(values, name="quantjob", namespace=NAMESPACE)


def test_bad_values_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("worker:\n  image:\n    repositry: registry.example/w\n", encoding="utf-8")
    values = helm_python.values_from_yaml(path.read_text(encoding="utf-8"))
    with chart() as loaded, pytest.raises(helm_python.HelmValuesError, match="repositry"):
        loaded.validate_schema(values)


@pytest.mark.parametrize("values, message", [
    ({"metrics": {"port": 8080}}, "metrics.port and operator.healthPort are both 8080"),
    ({"webhook": {"port": 8081}}, "metrics.port and webhook.port are both 8081"),
    ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "needs metrics.enabled"),
    ({"worker": {"extraVolumeMounts": [{"name": "drv", "mountPath": "/d"}]}}, 'volume "drv"'),
])
def test_checks_beyond_the_schema_stop_the_install(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render(values)


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_operator_reads_exactly_what_the_chart_sets(values: dict[str, Any]) -> None:
    objects, _ = render(values)
    deployment = the(objects, "Deployment")
    env = env_of(deployment)
    unknown = {name for name in env if name.startswith("QUANTJOB_")} - set(ENVIRONMENT)
    assert not unknown, f"the chart sets variables the operator does not read: {sorted(unknown)}"
    settings = load_settings(env)  # what `quantjob operator` does with the pod's environment

    merged = _merged(values)
    assert settings.namespaces == merged["watchNamespaces"]
    worker = merged["worker"]
    image = worker["image"]
    assert settings.worker_image == (f"{image['repository']}@{image['digest']}" if image["digest"]
                                     else f"{image['repository']}:{image['tag'] or '0.1.0'}")
    assert settings.npu_resource_name == worker["devices"]["npu"]["resourceName"]
    assert settings.cuda_resource_name == worker["devices"]["cuda"]["resourceName"]
    assert settings.npu_runtime_class == (worker["devices"]["npu"]["runtimeClassName"] or None)
    assert settings.master_port == worker["masterPort"]
    assert (settings.gang_scheduling, settings.volcano_scheduler, settings.coscheduling_scheduler) == (
        worker["gangScheduling"], worker["volcanoScheduler"], worker["coschedulingScheduler"])
    assert (settings.progress_reporting, settings.network_policy) == (worker["progressReporting"],
                                                                     worker["networkPolicy"])
    assert settings.resync_seconds == merged["operator"]["resyncSeconds"]
    policy = merged["policy"]
    assert (settings.allow_trust_remote_code, settings.allow_custom_image) == (policy["allowTrustRemoteCode"],
                                                                              policy["allowCustomImage"])
    assert (settings.env_allow, settings.env_deny) == (policy["envAllow"], policy["envDeny"])
    overlay = settings.pod_defaults.model_dump(mode="json", exclude_defaults=True)
    assert overlay == yaml.safe_load(env["QUANTJOB_POD_DEFAULTS"])  # every key taken, nothing dropped
    assert settings.log_format == merged["operator"]["logFormat"]
    assert settings.health_port == merged["operator"]["healthPort"]
    assert settings.metrics_port == (merged["metrics"]["port"] if merged["metrics"]["enabled"] else 0)
    webhook = merged["webhook"]
    assert settings.webhook.enabled is webhook["enabled"]
    if webhook["enabled"]:
        assert settings.webhook.port == webhook["port"]
        assert settings.webhook.failure_policy == webhook["failurePolicy"]
        assert settings.webhook.tls == ("files" if webhook["certManager"]["enabled"] else "self-signed")
        service = the(of_kind(objects, "Service"), "Service") if not merged["metrics"]["enabled"] else \
            next(s for s in of_kind(objects, "Service") if s["spec"]["ports"][0]["name"] == "webhook")
        assert (settings.webhook.service, settings.webhook.namespace) == (service["metadata"]["name"], NAMESPACE)
        assert settings.webhook.configuration == the(objects, "ValidatingWebhookConfiguration")["metadata"]["name"]

    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["health"] == settings.health_port
    assert ports.get("webhook") == (settings.webhook.port if settings.webhook.enabled else None)
    assert ports.get("metrics") == (settings.metrics_port or None)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}  # kopf's liveness endpoint
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    if settings.webhook.enabled and settings.webhook.tls == "files":
        secret = next(v for v in pod["volumes"] if v["name"] == mounts[settings.webhook.cert_dir])["secret"]
        assert secret["secretName"] == the(objects, "Certificate")["spec"]["secretName"]
    else:
        assert settings.webhook.cert_dir not in mounts


def _merged(values: dict[str, Any]) -> dict[str, Any]:
    with chart() as loaded:
        return loaded.merge_values(values)


def test_worker_scheduling_and_volumes_reach_the_pod_defaults() -> None:
    objects, _ = render(ALL_VALUES)
    overlay = yaml.safe_load(env_of(the(objects, "Deployment"))["QUANTJOB_POD_DEFAULTS"])
    worker = ALL_VALUES["worker"]
    assert overlay == {"nodeSelector": worker["nodeSelector"], "tolerations": worker["tolerations"],
                       "affinity": worker["affinity"], "volumes": worker["extraVolumes"],
                       "volumeMounts": worker["extraVolumeMounts"], "priorityClassName": worker["priorityClassName"],
                       "labels": worker["podLabels"], "annotations": worker["podAnnotations"],
                       "supplementalGroups": worker["supplementalGroups"], "env": worker["env"]}
    defaults, _ = render({})
    assert env_of(the(defaults, "Deployment"))["QUANTJOB_POD_DEFAULTS"] == "{}"


def _rules(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**rule, "apiGroups": rule.get("apiGroups", []), "resourceNames": rule.get("resourceNames")}
            for rule in role["rules"]]


def _allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str, name: str | None = None) -> bool:
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               and (rule["resourceNames"] is None or name in rule["resourceNames"]) for rule in rules)


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '*') for every combination a rule list allows."""
    return {(group, resource, verb, name) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"] for name in rule.get("resourceNames", ["*"])}


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_rbac_is_the_operators_own_rbac(values: dict[str, Any]) -> None:
    """The chart's rules are quantjob.operator.rbac's for the settings the chart gives the operator."""
    objects, _ = render(values)
    settings = load_settings(env_of(the(objects, "Deployment")))
    account = the(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    expected = rbac.build_rbac(settings, NAMESPACE)
    chart = [obj for obj in objects if obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    assert sorted((o["kind"], o["metadata"].get("namespace")) for o in chart) == \
        sorted((o["kind"], o["metadata"].get("namespace")) for o in expected)
    def rules_of(items: list[dict[str, Any]], kind: str, namespace: str | None, cluster_scoped: bool) -> list[Any]:
        return sorted(sorted(grants(o["rules"])) for o in items if o["kind"] == kind
                       and o["metadata"].get("namespace") == namespace
                       and o["metadata"]["name"].endswith("-cluster") is cluster_scoped)

    for kind in ("ClusterRole", "Role"):
        for namespace in {o["metadata"].get("namespace") for o in expected if o["kind"] == kind}:
            for cluster_scoped in (True, False):
                assert rules_of(chart, kind, namespace, cluster_scoped) == \
                    rules_of(expected, kind, namespace, cluster_scoped), (kind, namespace, cluster_scoped)
    for binding in (o for o in chart if o["kind"].endswith("Binding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
        role = binding["roleRef"]
        assert any(o["kind"] == role["kind"] and o["metadata"]["name"] == role["name"] for o in chart)


def test_namespaced_install_holds_no_namespaced_rule_elsewhere() -> None:
    objects, _ = render({"watchNamespaces": ["ml", "team-b"]})
    assert sorted(r["metadata"]["namespace"] for r in of_kind(objects, "Role")) == ["ml", "team-b"]
    (cluster_role,) = of_kind(objects, "ClusterRole")
    assert not {g for g in grants(cluster_role["rules"]) if g[1] in ("jobs", "configmaps", "roles", "quantjobs")}
    configuration = the(objects, "ValidatingWebhookConfiguration")["metadata"]["name"]
    webhook = {g for g in grants(cluster_role["rules"]) if g[1] == "validatingwebhookconfigurations"}
    assert webhook == {("admissionregistration.k8s.io", "validatingwebhookconfigurations", verb, configuration)
                       for verb in ("get", "patch")}


def test_operator_pod_meets_the_restricted_pod_security_standard() -> None:
    for values in CASES.values():
        objects, _ = render(values)
        pod = the(objects, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "hostNetwork" not in pod and "hostPID" not in pod
        assert all("hostPath" not in volume for volume in pod["volumes"])
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}


def test_one_uid_in_the_images_the_chart_and_the_worker_pods() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    uids = {int(uid) for uid in re.findall(r"^ARG QUANTJOB_UID=(\d+)$", dockerfile, re.MULTILINE)}
    assert uids == {builders.WORKER_UID}, "Dockerfile QUANTJOB_UID and builders.WORKER_UID must agree"
    objects, _ = render({})
    context = the(objects, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert context["runAsUser"] == context["runAsGroup"] == builders.WORKER_UID


def test_notes_explain_a_first_quantjob_that_the_operator_accepts() -> None:
    for values in ({}, {"watchNamespaces": ["team-b"]}):
        _, notes = render(values)
        block = notes.split("cat <<'YAML' | kubectl apply -f -\n", 1)[1].split("     YAML\n", 1)[0]
        manifest = yaml.safe_load("\n".join(line.removeprefix("     ") for line in block.splitlines()))
        assert manifest["metadata"]["namespace"] == (values.get("watchNamespaces") or ["ml"])[0]
        resolution = review_quantjob(manifest)
        assert resolution.ok, resolution.problems
        assert "kubectl -n quantjob-system rollout status deploy/quantjob-operator" in notes


def test_values_yaml_documents_every_field() -> None:
    """Each value in values.yaml has a comment above it, or above the block that holds it."""
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()

    def commented(index: int) -> bool:
        above = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        return above.startswith("#")

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")) or stripped.endswith(":"):
            continue  # comments, list items and block openers: checked through their values
        chain = [index]
        for i in range(index - 1, -1, -1):  # the blocks that hold this value, innermost first
            if lines[i].strip() and not lines[i].strip().startswith("#") and indent(lines[i]) < indent(
                    lines[chain[-1]]):
                chain.append(i)
        assert any(commented(i) for i in chain), f"values.yaml line {index + 1}: {stripped!r} has no comment"


@pytest.mark.parametrize("name", DEPLOY_FILES)
def test_deploy_manifests_are_the_rendered_chart(name: str) -> None:
    header, values = DEPLOY_FILES[name]
    assert (DEPLOY / name).read_text(encoding="utf-8") == deploy_text(header, values), \
        f"deploy/{name} is stale: run python3 tests/chart/render.py"
    assert sorted(path.name for path in DEPLOY.glob("*.yaml")) == sorted(DEPLOY_FILES), \
        "the manifests in deploy/ are all rendered from the chart (deploy/pod-defaults/ holds operator inputs)"


def test_upgrade_names_the_crd_step_helm_skips() -> None:
    """Issue 26.8: Helm never upgrades what crds/ holds; `helm upgrade` prints the step that does,
    and the step's directory holds exactly this version's CRD, ready for server-side apply."""
    _, notes = render({}, upgrade=True)
    assert "kubectl apply --server-side --force-conflicts -f charts/quantjob/crds/" in notes
    _, first = render({})
    assert "--server-side" not in first  # a first install gets the CRD from Helm itself
    (crd,) = [yaml.safe_load(path.read_text()) for path in sorted((CHART / "crds").glob("*.yaml"))]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    # nothing a server-side apply would refuse or fight over: no status, no server-owned metadata
    assert "status" not in crd and set(crd["metadata"]) <= {"name", "annotations", "labels"}
    doc = (ROOT / "docs" / "operator.md").read_text()
    assert "kubectl apply --server-side --force-conflicts -f charts/quantjob/crds/" in doc
