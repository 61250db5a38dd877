"""Paths inside a volume, compared after normalisation, and the rule that keeps the output away
from the model it is made from.

Paths are compared as the worker would open them: ``.`` segments, repeated and trailing ``/``
removed (``./Qwen2-7B/`` is ``Qwen2-7B``). ``check_relative_path`` (``quantjob.api.resource``)
has already refused absolute paths and ``..`` segments, so normalising never leaves the volume.
"""

from __future__ import annotations

import posixpath

from quantjob.api.problems import Problem
from quantjob.api.resource import QuantJob


def normalised(path: str) -> str:
    """``./a//b/`` -> ``a/b``; the root of the volume is ``.``."""
    return posixpath.normpath(path.replace("\\", "/")) or "."


def relation(path: str, other: str) -> str | None:
    """How ``path`` sits against ``other`` in one volume: ``"same"``, ``"inside"`` (path is under
    other), ``"contains"`` (other is under path), or None when neither holds either."""
    a, b = normalised(path), normalised(other)
    if a == b:
        return "same"
    if b == "." or a.startswith(b + "/"):
        return "inside"
    if a == "." or b.startswith(a + "/"):
        return "contains"
    return None


_WHERE = {"same": "is the model directory", "inside": "is inside the model directory",
          "contains": "contains the model directory"}


def output_over_model(job: QuantJob) -> list[Problem]:
    """The output may not be the model directory, lie inside it or contain it on the same claim:
    the run would write into the model, and an overwrite or a retry would delete its files."""
    model, output = job.spec.model, job.spec.output
    if model.pvc != output.pvc:
        return []
    found = relation(output.path, model.path)
    if found is None:
        return []
    return [Problem("spec.output.path",
                    f"output {output.path!r} {_WHERE[found]} {model.path!r} on claim {model.pvc!r} (paths compared "
                    f"as {normalised(output.path)!r} and {normalised(model.path)!r}); the quantized files would be "
                    "written among the model's and an overwrite would delete them: choose a path outside it, "
                    "or another claim")]
