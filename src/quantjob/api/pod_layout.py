"""Where things are inside a worker pod: the operator builds this layout, admission keeps user
additions (``spec.pod`` volumes and mounts, ``spec.env``) out of its way.

Also the environment variables the operator sets and the worker (or the container runtime) reads:
a QuantJob may not set them in ``spec.env``, so no user value can redirect the group, the API
token or the devices.
"""

from __future__ import annotations

import posixpath

MODEL_MOUNT = "/mnt/model"
OUTPUT_MOUNT = "/mnt/output"
CALIBRATION_MOUNT = "/mnt/calibration"
CONFIG_DIR = "/etc/quantjob"
SCRATCH_MOUNT = "/tmp"
SHM_MOUNT = "/dev/shm"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

OWN_VOLUMES = ("model", "output", "calibration", "config", "scratch", "shm", "api-token")
OWN_MOUNT_PATHS = (MODEL_MOUNT, OUTPUT_MOUNT, CALIBRATION_MOUNT, CONFIG_DIR, SCRATCH_MOUNT, SHM_MOUNT,
                   SERVICE_ACCOUNT_DIR)

# Read by the worker, set by the operator (or by Kubernetes / the device plugin for the pod).
RESERVED_ENV = frozenset({
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "JOB_COMPLETION_INDEX",
    "HOME", "TMPDIR", "OMP_NUM_THREADS",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
    "HCCL_IF_IP", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT",
    # device selection: the device plugin sets these; Ascend's and NVIDIA's container runtimes mount
    # every device the variable names, so a user value could reach devices the pod was not given
    "ASCEND_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
})
RESERVED_ENV_PREFIXES = ("QUANTJOB_", "KUBERNETES_", "ASCEND_RUNTIME_")

# Variables that make the entry point, the shell, the dynamic loader, Python, CANN or a collective
# library run code from somewhere else (a file on a user volume, a module on a path). With them a
# QuantJob could run its own program although the operator allows neither custom images nor a
# model's own code, so no QuantJob may set them (the operator's pod defaults, written by the
# administrator, still may). bash: BASH_ENV/ENV start-up files, exported functions (BASH_FUNC_*),
# SHELLOPTS/BASHOPTS (xtrace + PS4 runs commands); ld.so: LD_*, GCONV_PATH; OpenSSL: engines and
# providers from OPENSSL_*; CANN: ASCEND_HOME (the entry point sources ``set_env.sh`` under it) and
# every *_PATH/*_HOME it reads (ASCEND_OPP_PATH, ASCEND_CUSTOM_OPP_PATH, ASCEND_AICPU_PATH, ...);
# CUDA: CUDA_INJECTION64_PATH; NCCL/HCCL: *_PLUGIN libraries.
CODE_ENV = frozenset({
    "PATH", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "CDPATH", "GLOBIGNORE", "IFS", "PS4", "PROMPT_COMMAND",
    "SHELL", "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "ASCEND_HOME",
})
CODE_ENV_PREFIXES = ("LD_", "PYTHON", "BASH_FUNC_", "OPENSSL_", "ASCEND_TOOLKIT", "ASCEND_OPP", "ASCEND_AICPU",
                     "ASCEND_CUSTOM", "CUDA_INJECTION")
CODE_ENV_SUFFIXES = ("_PATH", "_HOME", "_PLUGIN", "_PRELOAD", "_LIBRARY")


def code_env(name: str) -> bool:
    """Whether variable ``name`` can make the pod's entry point or libraries run other code."""
    upper = name.upper()
    return (upper in CODE_ENV or upper.startswith(CODE_ENV_PREFIXES) or upper.endswith(CODE_ENV_SUFFIXES))


def reserved_env(name: str) -> bool:
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES) or code_env(name)


# Where a QuantJob's own volumes may be mounted: directories the worker image leaves empty. Anywhere
# else a mount could replace the image's code (``/opt/quantjob``, ``/usr/bin``, the entry point,
# CANN under ``/usr/local/Ascend``) or the system's files (``/etc``, ``/lib``), so that a QuantJob
# ran its own program although the operator allows no custom image. The worker's own mounts
# (``/mnt/model``, ...) lie under ``/mnt`` too and stay refused.
USER_MOUNT_ROOTS = ("/mnt", "/data", "/srv")

# Linux limits: a path component (a file name) is at most NAME_MAX bytes, a whole path PATH_MAX.
NAME_MAX = 255
PATH_MAX = 4096


def canonical(path: str) -> str:
    """``path`` as the kernel resolves it without links: ``.``/``..`` applied, repeated and trailing
    ``/`` removed (``/x/../etc/quantjob`` -> ``/etc/quantjob``)."""
    result = posixpath.normpath(path)
    return "/" + result.lstrip("/") if result.startswith("//") else result


def under(path: str, root: str) -> bool:
    """Whether absolute ``path`` is ``root`` or inside it (component-wise, canonical forms compared)."""
    parts = [p for p in canonical(path).split("/") if p]
    root_parts = [p for p in canonical(root).split("/") if p]
    return parts[:len(root_parts)] == root_parts


def overlaps(path: str, other: str) -> bool:
    """Whether one of two absolute paths is the other or lies inside it (a mount at one shadows the other)."""
    return under(path, other) or under(other, path)


def long_component(path: str) -> str | None:
    """A component of ``path`` longer than ``NAME_MAX`` bytes (UTF-8), or None."""
    for part in path.split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            return part
    return None


def mount_path_problem(path: str) -> str | None:
    """Why a QuantJob volume may not be mounted at ``path``: not absolute, not canonical, too long, or
    outside ``USER_MOUNT_ROOTS``; None when it may (the worker's own mounts are checked apart)."""
    if not path.startswith("/") or ":" in path or "\x00" in path:
        return f"{path!r} must be an absolute path without ':' or NUL"
    if path != canonical(path) or path.endswith("/"):
        return (f"{path!r} is not canonical (it resolves to {canonical(path)!r}); write it without '.', '..', "
                "repeated or trailing '/'")
    part = long_component(path)
    if part is not None:
        return f"{path!r} has a component of {len(part.encode('utf-8', 'surrogatepass'))} bytes; at most {NAME_MAX}"
    if not any(under(path, root) and path != root for root in USER_MOUNT_ROOTS) and path not in USER_MOUNT_ROOTS:
        return (f"{path!r} is outside the directories QuantJob volumes may use ({', '.join(USER_MOUNT_ROOTS)} and "
                "below): a mount elsewhere could replace the worker's program or the system's files; mount it "
                "under /mnt, /data or /srv")
    return None
