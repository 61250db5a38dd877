"""The operator's RBAC (issue 14.16): least privilege, one builder, the deploy manifests in step with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from emulator import quantjob_manifest

from quantjob.operator.builders import build_children
from quantjob.operator.rbac import build_rbac, cluster_rules, namespaced_rules
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "quantjob.yaml"
RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '*') for every combination a rule list allows."""
    return {(group, resource, verb, name) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"] for name in rule.get("resourceNames", ["*"])}


def test_namespaced_operator_gets_roles_in_its_namespaces_only() -> None:
    objects = build_rbac(Settings(namespaces=["ml", "team-b"]))
    roles = [o for o in objects if o["kind"] == "Role"]
    assert [r["metadata"]["namespace"] for r in roles] == ["ml", "team-b"]
    assert {b["metadata"]["namespace"] for b in objects if b["kind"] == "RoleBinding"} == {"ml", "team-b"}
    cluster = [o for o in objects if o["kind"] == "ClusterRole"]
    assert len(cluster) == 1  # the cluster-scoped rules only: no jobs, serviceaccounts or roles anywhere else
    assert not {g for g in grants(cluster[0]["rules"]) if g[1] in ("jobs", "serviceaccounts", "roles", "configmaps")}


def test_webhook_configuration_only_ours_and_never_created() -> None:
    allowed = grants(cluster_rules(Settings()))
    webhook = {g for g in allowed if g[1] == "validatingwebhookconfigurations"}
    assert webhook == {("admissionregistration.k8s.io", "validatingwebhookconfigurations", verb, "quantjob.io")
                       for verb in ("get", "patch")}
    assert not {g for g in grants(cluster_rules(Settings(webhook={"enabled": False})))
                if g[1] == "validatingwebhookconfigurations"}


def test_no_write_on_quantjobs_but_status_and_the_finalizers_block_owner_deletion_needs() -> None:
    allowed = grants(namespaced_rules(Settings()))
    assert {g[2] for g in allowed if g[1] == "quantjobs"} == {"get", "list", "watch"}
    assert {g[2] for g in allowed if g[1] == "quantjobs/status"} == {"get", "patch"}
    # issue 26.4b: blockOwnerDeletion under OwnerReferencesPermissionEnforcement, nothing more
    assert {g for g in allowed if g[1].endswith("/finalizers")} == {("quantjob.io", "quantjobs/finalizers", "update",
                                                                      "*")}
    assert {g[1] for g in allowed if g[2] == "delete"} == {"jobs"}


def test_operator_holds_everything_it_grants_to_a_worker() -> None:
    """Kubernetes refuses a Role granting more than its creator holds (no ``escalate`` verb here)."""
    resolution = review_quantjob(quantjob_manifest())
    assert resolution.job is not None
    (worker_role,) = [o for o in build_children(resolution.job, resolution, Settings()) if o["kind"] == "Role"]
    operator = grants(namespaced_rules(Settings()))
    for group, resource, verb, name in grants(worker_role["rules"]):
        assert (group, resource, verb, name) in operator or (group, resource, verb, "*") in operator


def test_network_policy_rule_only_when_enabled() -> None:
    assert not {g for g in grants(namespaced_rules(Settings())) if g[1] == "networkpolicies"}
    assert {g[2] for g in grants(namespaced_rules(Settings(network_policy=True))) if g[1] == "networkpolicies"} == \
        {"get", "create"}


def test_deploy_manifests_carry_the_generated_rbac() -> None:
    """deploy/quantjob.yaml is the chart rendered (tests/chart checks every chart configuration)."""
    docs = [doc for doc in yaml.safe_load_all(DEPLOY.read_text()) if doc]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    env = {item["name"]: item.get("value", deployment["metadata"]["namespace"])
           for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = load_settings(env)
    committed = [doc for doc in docs if doc["kind"] in RBAC_KINDS]
    expected = build_rbac(settings, deployment["metadata"]["namespace"])
    def summary(objects: list[dict[str, Any]]) -> list[tuple[str, str, list[tuple[str, str, str, str]]]]:
        return sorted((o["kind"], o["metadata"]["name"], sorted(grants(o.get("rules", [])))) for o in objects)

    assert summary(committed) == summary(expected), \
        "deploy/quantjob.yaml differs from quantjob.operator.rbac: fix the chart, then python3 tests/chart/render.py"
    configurations = [doc for doc in docs if doc["kind"] == "ValidatingWebhookConfiguration"]
    assert [c["metadata"]["name"] for c in configurations] == [settings.webhook.configuration]  # only patched


def test_print_rbac_command() -> None:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("QUANTJOB_")}
    out = subprocess.run([sys.executable, "-m", "quantjob.cli", "operator", "--print-rbac", "-n", "ml"],
                         check=True, capture_output=True, text=True, env=environ).stdout
    kinds = [doc["kind"] for doc in yaml.safe_load_all(out)]
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]


def test_without_progress_reporting_no_configmap_watch_or_patch() -> None:
    """Issue 26.3: the narrowest rules the settings allow; ConfigMap patch exists only to be granted."""
    allowed = grants(namespaced_rules(Settings(progress_reporting=False)))
    assert {g[2] for g in allowed if g[1] == "configmaps"} == {"get", "create"}
    assert {g[2] for g in grants(namespaced_rules(Settings())) if g[1] == "configmaps"} == \
        {"get", "list", "watch", "create", "patch"}
