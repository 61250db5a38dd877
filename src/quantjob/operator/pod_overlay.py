"""The operator's pod defaults and a QuantJob's ``spec.pod``, merged, then applied to a pod template.

Merge rules (the QuantJob's own choice wins where one value must be picked):

- ``schedulerName``, ``priorityClassName``, ``affinity``: the QuantJob's if set, else the default;
- ``nodeSelector``, ``labels``, ``annotations``: key by key, the QuantJob's value wins;
- ``tolerations``: the defaults', then the QuantJob's;
- ``supplementalGroups``: the union, sorted;
- ``volumes`` / ``volumeMounts``: the defaults', then the QuantJob's; a QuantJob volume named like a
  default one, or a mount at, inside or above a default mount's path
  (canonical forms compared), is refused at admission (``conflicts``);
- ``env``: only the defaults carry env; ``spec.env`` and the operator's own variables are added by
  the Job builder (the operator's win over both).
"""

from __future__ import annotations

from typing import Any

from quantjob.api.pod_layout import canonical, overlaps
from quantjob.api.problems import Problem
from quantjob.api.resource import PodOverlay
from quantjob.operator.settings import PodDefaults


def conflicts(defaults: PodDefaults, own: PodOverlay) -> list[Problem]:
    """A QuantJob's volumes or mounts that would shadow the operator's pod defaults."""
    problems: list[Problem] = []
    default_volumes = {volume["name"] for volume in defaults.volumes}
    for index, volume in enumerate(own.volumes):
        if volume.get("name") in default_volumes:
            problems.append(Problem(f"spec.pod.volumes[{index}].name",
                                    f"volume {volume['name']!r} is defined by the operator's pod defaults; "
                                    "use another name"))
    for index, mount in enumerate(own.volumeMounts):  # canonical forms, either inside the other
        clash = next((default.mountPath for default in defaults.volumeMounts
                      if overlaps(mount.mountPath, default.mountPath)), None)
        if clash is not None:
            problems.append(Problem(f"spec.pod.volumeMounts[{index}].mountPath",
                                    f"{mount.mountPath} (resolved {canonical(mount.mountPath)}) is or overlaps "
                                    f"{clash}, mounted by the operator's pod defaults; use another path"))
    return problems


def merge(defaults: PodDefaults, own: PodOverlay) -> PodDefaults:
    own_volumes = [volume for volume in own.volumes
                   if volume.get("name") not in {v["name"] for v in defaults.volumes}]
    return PodDefaults.model_construct(
        schedulerName=own.schedulerName or defaults.schedulerName,
        priorityClassName=own.priorityClassName or defaults.priorityClassName,
        nodeSelector={**defaults.nodeSelector, **own.nodeSelector},
        tolerations=[*defaults.tolerations, *own.tolerations],
        affinity=own.affinity if own.affinity is not None else defaults.affinity,
        labels={**defaults.labels, **own.labels},
        annotations={**defaults.annotations, **own.annotations},
        supplementalGroups=sorted(set(defaults.supplementalGroups) | set(own.supplementalGroups)),
        volumes=[*defaults.volumes, *own_volumes],
        volumeMounts=[*defaults.volumeMounts, *own.volumeMounts],
        env=dict(defaults.env),
    )


def apply(overlay: PodDefaults, pod_metadata: dict[str, Any], pod_spec: dict[str, Any],
          container: dict[str, Any]) -> None:
    """Add ``overlay`` to a pod template (our own labels, volumes and mounts are already there and win)."""
    if overlay.labels:
        pod_metadata["labels"] = {**overlay.labels, **pod_metadata.get("labels", {})}
    if overlay.annotations:
        pod_metadata["annotations"] = {**overlay.annotations, **pod_metadata.get("annotations", {})}
    for field in ("schedulerName", "priorityClassName"):
        value = getattr(overlay, field)
        if value:
            pod_spec[field] = value
    if overlay.nodeSelector:
        pod_spec["nodeSelector"] = dict(overlay.nodeSelector)
    if overlay.tolerations:
        pod_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in overlay.tolerations]
    if overlay.affinity:
        pod_spec["affinity"] = overlay.affinity
    if overlay.supplementalGroups:
        pod_spec["securityContext"]["supplementalGroups"] = list(overlay.supplementalGroups)
    pod_spec["volumes"] = [*pod_spec.get("volumes", []), *overlay.volumes]
    container["volumeMounts"] = [*container.get("volumeMounts", []), *map(mount_manifest, overlay.volumeMounts)]


def mount_manifest(mount: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"name": mount.name, "mountPath": mount.mountPath}
    if mount.readOnly:
        result["readOnly"] = True
    if mount.subPath:
        result["subPath"] = mount.subPath
    return result
