"""The claims a QuantJob mounts, read before an attempt starts: can every rank mount them?

A ReadWriteOnce volume attaches to one node; a second node's pod fails with Multi-Attach and, with
no other sign, the QuantJob would end as StartupTimeout half an hour later. A ReadWriteOncePod volume
admits one pod. So, for a group of more than one rank:

- ReadWriteOncePod (and nothing wider): refused, naming the claim;
- ReadWriteOnce (and nothing wider) while ``spec.devices.perNode`` spreads the ranks over several
  nodes: refused, naming the claim;
- ReadWriteOnce otherwise: a warning in ``status.warnings`` (the ranks can share it only on one node;
  the operator prefers packing them, ``builders.place_ranks``, but one node must hold them all).

A claim that does not exist yet, or that the operator may not read, is left to the scheduler.
"""

from __future__ import annotations

import logging

import kubernetes
from kubernetes.client.exceptions import ApiException

from quantjob.api.resource import QuantJob
from quantjob.operator import kube

log = logging.getLogger(__name__)
SHARED = {"ReadWriteMany", "ReadOnlyMany"}


def claims_of(job: QuantJob) -> list[tuple[str, str]]:
    """(field, claim name) of every claim the pods mount, in the spec's order, each once."""
    spec = job.spec
    found = [("spec.model.pvc", spec.model.pvc)]
    if spec.calibration.path and spec.calibration.pvc:
        found.append(("spec.calibration.pvc", spec.calibration.pvc))
    found.append(("spec.output.pvc", spec.output.pvc))
    unique: list[tuple[str, str]] = []
    for where, name in found:
        if name not in {claim for _, claim in unique}:
            unique.append((where, name))
    return unique


def judge(job: QuantJob, world_size: int, claims: list[tuple[str, str, list[str]]]) -> tuple[str | None, list[str]]:
    """(refusal, warnings) for ``claims`` = (field, name, access modes); pure."""
    if world_size <= 1:
        return None, []
    per_node = job.spec.devices.perNode
    warnings: list[str] = []
    for where, name, modes in claims:
        if not modes or SHARED & set(modes):
            continue
        if set(modes) == {"ReadWriteOncePod"}:
            return (f"{where}: claim {name!r} is ReadWriteOncePod, so only one pod can mount it, and this QuantJob "
                    f"runs {world_size} ranks; use a ReadWriteMany claim (ReadOnlyMany for the model)"), warnings
        if per_node is not None and per_node < world_size:
            return (f"{where}: claim {name!r} is ReadWriteOnce, so only pods on one node can mount it, but "
                    f"spec.devices.perNode {per_node} puts the {world_size} ranks on {world_size // per_node} "
                    "nodes; use a ReadWriteMany claim (ReadOnlyMany for the model), or perNode "
                    f"{world_size}"), warnings
        warnings.append(f"{where}: claim {name!r} is ReadWriteOnce: all {world_size} ranks must run on one node "
                        "(the operator prefers packing them); a rank on another node cannot mount it (Multi-Attach) "
                        "and the group never starts; use a ReadWriteMany claim")
    return None, warnings


def check_claims(api: kubernetes.client.ApiClient, job: QuantJob, namespace: str,
                 world_size: int) -> tuple[str | None, list[str]]:
    """``judge`` on the claims as the API server has them."""
    if world_size <= 1:
        return None, []
    found: list[tuple[str, str, list[str]]] = []
    for where, name in claims_of(job):
        try:
            claim = kube.get(api, kube.Ref("v1", "persistentvolumeclaims", namespace, name))
        except ApiException as error:
            log.warning("cannot read claim %s/%s (HTTP %s); its access modes are not checked", namespace, name,
                        error.status)
            continue
        if claim is None:
            continue
        modes = (claim.get("status") or {}).get("accessModes") or (claim.get("spec") or {}).get("accessModes") or []
        found.append((where, name, [str(mode) for mode in modes]))
    return judge(job, world_size, found)
