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
from quantjob.operator.builders import check_name, config_map_problems
from quantjob.operator.settings import Settings

CHECKED_KEYS = ("apiVersion", "kind", "metadata", "spec")
# etcd's default request limit (--max-request-bytes, 1.5 MiB) less room for what the API server adds
# (managedFields, status): a larger QuantJob is refused when it is stored.
MAX_OBJECT_BYTES = 1_500_000
# The API server appends 5 random characters to generateName, whose first 58 are kept.
GENERATED_SUFFIX = 5
GENERATE_NAME_KEPT = 63 - GENERATED_SUFFIX


def json_size_over(node: Any, limit: int) -> int | None:
    """The size of ``node`` as compact JSON (an upper bound for strings with escapes), or None once it
    passes ``limit``; stops early, so a YAML alias bomb costs no more than ``limit`` allows."""
    size, stack = 0, [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            size += 2 + 2 * len(item)
            for key, value in item.items():
                size += len(str(key)) + 2
                stack.append(value)
        elif isinstance(item, list):
            size += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, str):
            size += len(item.encode("utf-8", "surrogatepass")) + 2
        else:
            size += len(str(item))
        if size > limit:
            return None
    return size


def object_size_problems(document: Mapping[str, Any]) -> list[Problem]:
    if json_size_over(dict(document), MAX_OBJECT_BYTES) is None:
        return [Problem("spec", f"the QuantJob is larger than {MAX_OBJECT_BYTES} bytes as JSON, more than the "
                                "API server stores in one object; shorten spec.config or spec.env")]
    return []


def name_problems(metadata: Mapping[str, Any], world_size: int, attempts: int) -> list[Problem]:
    """The name (or the one the API server makes from ``generateName``) against the children's rules."""
    name = metadata.get("name") or ""
    if name:
        return check_name(name, world_size, attempts)
    generate = metadata.get("generateName")
    if not isinstance(generate, str) or not generate:
        return []  # a manifest for ``render`` without a name: the name is checked where it is filled
    filled = generate[:GENERATE_NAME_KEPT] + "z" * GENERATED_SUFFIX
    return [Problem("metadata.generateName", f"{problem.message} (the name is generateName {generate!r}, at most "
                                             f"{GENERATE_NAME_KEPT} characters of it, and {GENERATED_SUFFIX} random "
                                             "characters)")
            for problem in check_name(filled, world_size, attempts)]


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
    too_large = object_size_problems(document)
    if too_large:
        return Resolution(None, 0, None, too_large)
    resolution = check_document(document, devices=devices)
    job = resolution.job
    if job is not None:
        attempts = job.spec.maxRestarts + job.spec.maxDisruptions + 1
        resolution.problems.extend(name_problems(job.metadata, resolution.world_size, attempts))
        resolution.problems.extend(policy_problems(job, settings if settings is not None else Settings()))
        if resolution.ok:
            resolution.problems.extend(config_map_problems(resolution))
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
