"""The checks every caller (webhook, reconcile, ``quantjob render``, ``quantjob validate``) runs on a
QuantJob object: the compatibility check, the name rules of its children, and the operator's policy.

With the default ``Settings()`` the policy adds nothing a default operator would not also refuse,
so ``quantjob validate`` (default settings) and a default webhook give the same verdict.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from quantjob.api.check import Resolution, check_document
from quantjob.api.problems import Problem
from quantjob.api.resource import KIND, QuantJob
from quantjob.operator import gang, pod_overlay
from quantjob.operator.builders import check_name
from quantjob.operator.settings import Settings

CHECKED_KEYS = ("apiVersion", "kind", "metadata", "spec")


def policy_problems(job: QuantJob, settings: Settings) -> list[Problem]:
    """What this operator's settings forbid or what would clash with its pod defaults."""
    spec = job.spec
    problems: list[Problem] = []
    if spec.model.trustRemoteCode and not settings.allow_trust_remote_code:
        problems.append(Problem("spec.model.trustRemoteCode", "this operator does not run a model's own Python "
                                                              "code (QUANTJOB_ALLOW_TRUST_REMOTE_CODE=false); "
                                                              "remove trustRemoteCode"))
    if spec.image is not None and not settings.allow_custom_image:
        problems.append(Problem("spec.image", "this operator runs its own worker image only "
                                              "(QUANTJOB_ALLOW_CUSTOM_IMAGE=false); remove spec.image"))
    for key in sorted(spec.env):
        if settings.env_allow and not any(fnmatch.fnmatchcase(key, glob) for glob in settings.env_allow):
            problems.append(Problem(f"spec.env.{key}", f"not among the variables this operator allows "
                                                       f"({', '.join(settings.env_allow)})"))
        elif any(fnmatch.fnmatchcase(key, glob) for glob in settings.env_deny):
            problems.append(Problem(f"spec.env.{key}", f"this operator forbids it (QUANTJOB_ENV_DENY: "
                                                       f"{', '.join(settings.env_deny)})"))
    problems.extend(pod_overlay.conflicts(settings.pod_defaults, spec.pod))
    overlay_scheduler = spec.pod.schedulerName or settings.pod_defaults.schedulerName
    problems.extend(gang.gang_problems(job, settings, overlay_scheduler))
    return problems


def review_quantjob(body: Mapping[str, Any], settings: Settings | None = None,
                    devices: int | None = None) -> Resolution:
    """``check_document`` on the object plus the children's name rules and the operator's policy."""
    document = {key: body[key] for key in CHECKED_KEYS if key in body}
    resolution = check_document(document, devices=devices)
    job = resolution.job
    if job is not None:
        name = job.metadata.get("name") or ""
        if name:  # a manifest for ``render`` may use generateName; the API server fills the name
            attempts = job.spec.maxRestarts + job.spec.maxDisruptions + 1
            resolution.problems.extend(check_name(name, resolution.world_size, attempts))
        resolution.problems.extend(policy_problems(job, settings if settings is not None else Settings()))
    return resolution


def review_document(document: Any, devices: int | None = None) -> Resolution:
    """``quantjob validate``'s check: a QuantJob as a default operator's webhook judges it, any other
    document (a modelslim_v1 config) as ``check_document`` does."""
    if isinstance(document, dict) and document.get("kind") == KIND:
        return review_quantjob(document, Settings(), devices=devices)
    return check_document(document, devices=devices)


def spec_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Problem]:
    """Problems for spec fields changed by an UPDATE: the spec is immutable (the CRD's own rule says
    the same, so this holds with or without the webhook). Metadata and status may change."""
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    changed = sorted(key for key in set(old_spec) | set(new_spec) if old_spec.get(key) != new_spec.get(key))
    return [Problem(f"spec.{key}", "spec is immutable; delete the QuantJob and create it again (or under a new "
                                   "name) to change it") for key in changed]
