"""The checks every caller (webhook, create handler, ``quantjob render``) runs on a QuantJob object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantjob.api.check import Resolution, check_document
from quantjob.api.problems import Problem
from quantjob.operator.builders import check_name

CHECKED_KEYS = ("apiVersion", "kind", "metadata", "spec")


def review_quantjob(body: Mapping[str, Any]) -> Resolution:
    """``check_document`` on the object's spec plus the name rules of the children it gets."""
    document = {key: body[key] for key in CHECKED_KEYS if key in body}
    resolution = check_document(document)
    if resolution.job is not None:
        name = resolution.job.metadata.get("name") or ""
        if name:  # a manifest for ``render`` may use generateName; the API server fills the name
            resolution.problems.extend(check_name(name, resolution.world_size))
    return resolution


def spec_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Problem]:
    """Problems for spec fields changed on a QuantJob whose Job exists (``status.job`` set)."""
    if not (old.get("status") or {}).get("job"):
        return []
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    changed = sorted(key for key in set(old_spec) | set(new_spec) if old_spec.get(key) != new_spec.get(key))
    job = old["status"]["job"]
    return [Problem(f"spec.{key}", f"spec is immutable once Job {job!r} exists; delete the QuantJob and "
                                   "create it again (or under a new name) to change it")
            for key in changed]
