"""Gang scheduling: a PodGroup per attempt so the scheduler places all ranks at once or none.

- ``volcano``: a ``scheduling.volcano.sh/v1beta1`` PodGroup (``minMember`` = world size, optional
  ``queue``), pods name it in the ``scheduling.k8s.io/group-name`` annotation and use Volcano's
  ``schedulerName``. MindCluster's device plugin in Volcano mode only allocates NPUs to pods Volcano
  placed, so this is also what MindCluster clusters need.
- ``coscheduling``: a ``scheduling.x-k8s.io/v1alpha1`` PodGroup of the scheduler-plugins
  coscheduling plugin (``minMember``, ``scheduleTimeoutSeconds``), pods carry the
  ``scheduling.x-k8s.io/pod-group`` label and use the second scheduler's name.
- ``none``: nothing; the startup deadline (``spec.startupTimeoutSeconds``) still fails a group that
  never fully starts, and Kueue (``spec.queueName``) admits the Job as one workload.
"""

from __future__ import annotations

from typing import Any

from quantjob.api.problems import Problem
from quantjob.api.resource import QuantJob
from quantjob.operator.settings import Settings

VOLCANO_API = "scheduling.volcano.sh/v1beta1"
COSCHEDULING_API = "scheduling.x-k8s.io/v1alpha1"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
COSCHEDULING_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"


def gang_of(job: QuantJob, settings: Settings) -> str:
    return job.spec.scheduling.gang or settings.gang_scheduling


def scheduler_name(gang: str, settings: Settings) -> str | None:
    return {"volcano": settings.volcano_scheduler, "coscheduling": settings.coscheduling_scheduler}.get(gang)


def gang_problems(job: QuantJob, settings: Settings, overlay_scheduler: str | None) -> list[Problem]:
    """A gang needs its own scheduler; a different ``schedulerName`` in the overlay would bypass it."""
    gang = gang_of(job, settings)
    wanted = scheduler_name(gang, settings)
    problems: list[Problem] = []
    if wanted and overlay_scheduler and overlay_scheduler != wanted:
        problems.append(Problem("spec.pod.schedulerName", f"gang scheduling {gang} places pods with scheduler "
                                                          f"{wanted!r}, not {overlay_scheduler!r}; remove "
                                                          "schedulerName or set scheduling.gang: none"))
    return problems


def build_scheduler_pod_group(job: QuantJob, world_size: int, settings: Settings,
                              metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The PodGroup object of the gang scheduler in use (Volcano's or coscheduling's), with ``metadata``
    as given; None without gang scheduling."""
    gang = gang_of(job, settings)
    if gang == "volcano":
        spec: dict[str, Any] = {"minMember": world_size}
        if job.spec.scheduling.queue:
            spec["queue"] = job.spec.scheduling.queue
        priority = job.spec.pod.priorityClassName or settings.pod_defaults.priorityClassName
        if priority:
            spec["priorityClassName"] = priority
        return {"apiVersion": VOLCANO_API, "kind": "PodGroup", "metadata": metadata, "spec": spec}
    if gang == "coscheduling":
        return {"apiVersion": COSCHEDULING_API, "kind": "PodGroup", "metadata": metadata,
                "spec": {"minMember": world_size, "scheduleTimeoutSeconds": job.spec.startupTimeoutSeconds}}
    return None


def mark_pods(job: QuantJob, group: str, settings: Settings, pod_metadata: dict[str, Any],
              pod_spec: dict[str, Any]) -> None:
    """Point the pod template at PodGroup ``group`` and its scheduler."""
    gang = gang_of(job, settings)
    name = scheduler_name(gang, settings)
    if name:
        pod_spec["schedulerName"] = name
    if gang == "volcano":
        pod_metadata.setdefault("annotations", {})[VOLCANO_GROUP_ANNOTATION] = group
    elif gang == "coscheduling":
        pod_metadata.setdefault("labels", {})[COSCHEDULING_GROUP_LABEL] = group
