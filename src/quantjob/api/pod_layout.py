"""Where things are inside a worker pod: the operator builds this layout, admission keeps user
additions (``spec.pod`` volumes and mounts, ``spec.env``) out of its way.

Also the environment variables the operator sets and the worker (or the container runtime) reads:
a QuantJob may not set them in ``spec.env``, so no user value can redirect the group, the API
token or the devices.
"""

from __future__ import annotations

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


def reserved_env(name: str) -> bool:
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES)


def under(path: str, root: str) -> bool:
    """Whether absolute ``path`` is ``root`` or inside it (component-wise, after normalising)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    root_parts = [p for p in root.split("/") if p not in ("", ".")]
    return parts[:len(root_parts)] == root_parts
