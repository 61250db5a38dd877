"""The operator's RBAC, in one place: the Helm chart (and ``deploy/``, rendered from it) follows it.

- Namespaced rules (QuantJobs and their children): a ClusterRole bound cluster-wide when the
  operator watches the whole cluster, or one Role + RoleBinding per watched namespace otherwise
  (``QUANTJOB_NAMESPACES``), so a namespaced operator cannot touch any other namespace.
- Cluster-scoped rules, always a small ClusterRole: kopf's discovery (CRDs and namespaces, read
  only), the RuntimeClass check (``get``), and ``get``/``patch`` of our own
  ValidatingWebhookConfiguration by name (never ``create``, never another configuration).

The operator never needs ``patch`` on QuantJobs (it only writes their status), nor ``delete`` on
anything but Jobs (a group that never fully started is stopped). It holds ``update`` on
``quantjobs/finalizers`` only because its owner references set ``blockOwnerDeletion`` (a foreground
delete of a QuantJob waits for its ranks), which OwnerReferencesPermissionEnforcement requires; it
never writes a finalizer. It holds ``get``/``patch`` on
ConfigMaps because it grants exactly that (on one ConfigMap) to each QuantJob's worker Role, and
Kubernetes forbids granting more than one holds.
"""

from __future__ import annotations

from typing import Any

from quantjob.api.resource import GROUP, PLURAL
from quantjob.operator.settings import Settings

Manifest = dict[str, Any]
NAME = "quantjob-operator"
OPERATOR_NAMESPACE = "quantjob-system"
RBAC_API = "rbac.authorization.k8s.io/v1"


def namespaced_rules(settings: Settings) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         # list/watch: the progress ConfigMaps' events; patch: granted to each worker Role
         "verbs": ["get", "list", "watch", "create", "patch"] if settings.progress_reporting else ["get", "create"]},
        {"apiGroups": [""], "resources": ["services", "serviceaccounts"], "verbs": ["get", "create"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
         "verbs": ["get", "create"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "create"]},
        {"apiGroups": ["scheduling.volcano.sh", "scheduling.x-k8s.io"], "resources": ["podgroups"],
         "verbs": ["get", "create"]},
    ]
    if settings.network_policy:
        rules.append({"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "create"]})
    return rules


def cluster_rules(settings: Settings) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["node.k8s.io"], "resources": ["runtimeclasses"], "verbs": ["get"]},
    ]
    if settings.webhook.enabled and settings.webhook.configuration:
        rules.append({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
                      "resourceNames": [settings.webhook.configuration], "verbs": ["get", "patch"]})
    return rules


def _subject(namespace: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": NAME, "namespace": namespace}


def build_rbac(settings: Settings, operator_namespace: str = OPERATOR_NAMESPACE) -> list[Manifest]:
    """ClusterRole(s), Role(s) and their bindings for the operator's ServiceAccount."""
    cluster_name = f"{NAME}-cluster"
    objects: list[Manifest] = [
        {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": {"name": cluster_name},
         "rules": cluster_rules(settings)},
        {"apiVersion": RBAC_API, "kind": "ClusterRoleBinding", "metadata": {"name": cluster_name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
         "subjects": [_subject(operator_namespace)]},
    ]
    if settings.cluster_wide:
        objects += [
            {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": {"name": NAME},
             "rules": namespaced_rules(settings)},
            {"apiVersion": RBAC_API, "kind": "ClusterRoleBinding", "metadata": {"name": NAME},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
             "subjects": [_subject(operator_namespace)]},
        ]
        return objects
    for namespace in settings.namespaces:
        objects += [
            {"apiVersion": RBAC_API, "kind": "Role", "metadata": {"name": NAME, "namespace": namespace},
             "rules": namespaced_rules(settings)},
            {"apiVersion": RBAC_API, "kind": "RoleBinding", "metadata": {"name": NAME, "namespace": namespace},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
             "subjects": [_subject(operator_namespace)]},
        ]
    return objects
