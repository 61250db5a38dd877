"""Where the worker may write: never the model directory, inside it, or above it.

Admission compares the two paths of a QuantJob on the same claim by name
(``quantjob.api.volume_paths``); here the worker compares what the paths resolve to on disk, by
file identity (device and inode), so two mounts of one volume (``/mnt/model`` read-only and
``/mnt/output`` read-write), symbolic links and ``..`` are seen through whatever the volumes are.
``name_too_long`` is checked on every path flag before any of them is opened: the kernel refuses a
name over ``NAME_MAX`` bytes (ENAMETOOLONG), which would otherwise surface as a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

from quantjob.worker.errors import QuantJobError

NAME_MAX = 255     # bytes in one file or directory name (Linux, and every file system a pod mounts)
PATH_MAX = 4096    # bytes in a whole path, its terminating NUL included


def name_too_long(path: Path) -> str | None:
    """Why the kernel would refuse ``path`` with ENAMETOOLONG (a component over ``NAME_MAX`` bytes,
    or the whole over ``PATH_MAX``); None when it would not."""
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            return f"its component {part[:40]!r}... is {size} bytes long, over the {NAME_MAX} bytes a name may have"
    size = len(os.fsencode(os.path.abspath(path)))
    if size >= PATH_MAX:
        return f"it is {size} bytes long, over the {PATH_MAX - 1} bytes a path may have"
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def is_within(path: Path, directory: Path) -> bool:
    """Whether ``path`` is ``directory`` or lies under it, by file identity of ``path`` and of each
    existing parent (``path`` itself need not exist yet)."""
    target = _identity(directory)
    if target is None:
        return False
    resolved = Path(os.path.abspath(path)).resolve()
    return any(_identity(candidate) == target for candidate in (resolved, *resolved.parents))


def check_save_path(save_path: Path, model_path: Path) -> None:
    """Refuse an output that would be written among the model's files or hold them, and one that
    cannot be created; QuantJobError naming both paths and the fix."""
    if is_within(save_path, model_path):
        same = _identity(save_path) == _identity(model_path)
        where = "is the model directory" if same else "is inside the model directory"
        raise QuantJobError(f"--save_path {save_path} {where} {model_path}; the quantized files would be written "
                            "among the model's and --overwrite would delete them: choose a separate output directory")
    if save_path.exists() and is_within(model_path, save_path):
        raise QuantJobError(f"--save_path {save_path} contains the model directory {model_path}; --overwrite "
                            "would delete files beside the model: choose a separate output directory")
    probe = save_path if save_path.exists() else next((p for p in save_path.parents if p.exists()), Path("/"))
    if not probe.is_dir():
        raise QuantJobError(f"--save_path {save_path}: {probe} exists and is not a directory; "
                            "choose a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise QuantJobError(f"--save_path {save_path}: {probe} is not writable; choose a writable location "
                            "or fix its permissions")
