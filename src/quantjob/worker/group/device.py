"""The one device module: every device-specific call (npu, cuda, cpu) lives here.

``torch_npu`` is imported lazily and only here, the first time an ``npu`` device is used, so the
worker runs on machines without Ascend software.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from quantjob.worker.errors import QuantJobError

if TYPE_CHECKING:  # torch is imported where it is used: the launcher and the CLI never need it
    import torch

DeviceType = Literal["npu", "cuda", "cpu"]
DEVICE_TYPES: tuple[DeviceType, ...] = ("npu", "cuda", "cpu")

BACKENDS: dict[DeviceType, str] = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}

# The variable that restricts a process to one accelerator (the launcher sets it per rank).
VISIBLE_DEVICES_ENV: dict[DeviceType, str | None] = {
    "npu": "ASCEND_RT_VISIBLE_DEVICES",
    "cuda": "CUDA_VISIBLE_DEVICES",
    "cpu": None,
}

_EXPECTED = "expected TYPE or TYPE:I,J,... with TYPE one of npu, cuda, cpu (e.g. npu:0,1,2,3, cuda:0, cpu:0,1)"
_DEVICE_RE = re.compile(r"^(?P<type>[a-z]+)(?::(?P<indices>[0-9]+(?:,[0-9]+)*))?$")


@dataclass(frozen=True)
class DeviceSpec:
    """The devices one run uses: a type and the local indices, one rank per index."""

    type: DeviceType
    indices: tuple[int, ...] = (0,)

    @property
    def count(self) -> int:
        return len(self.indices)

    def __str__(self) -> str:
        return f"{self.type}:{','.join(str(i) for i in self.indices)}"


def parse_devices(text: str) -> DeviceSpec:
    """Parse a ``--device`` value: ``cpu`` (one device), ``cpu:0,1``, ``npu:0,1,2,3``, ``cuda:0``."""
    cleaned = text.strip().lower().replace(" ", "")
    match = _DEVICE_RE.match(cleaned)
    if not match:
        raise ValueError(f"--device {text!r} is not understood; {_EXPECTED}")
    kind = match.group("type")
    if kind not in DEVICE_TYPES:
        raise ValueError(f"--device {text!r}: unknown device type {kind!r}; {_EXPECTED}")
    raw = match.group("indices")
    indices = tuple(int(i) for i in raw.split(",")) if raw else (0,)
    if len(set(indices)) != len(indices):
        raise ValueError(f"--device {text!r} lists a device twice; list each index once (e.g. {kind}:0,1)")
    return DeviceSpec(cast(DeviceType, kind), indices)


def _check_type(kind: str) -> DeviceType:
    if kind not in DEVICE_TYPES:
        raise ValueError(f"unknown device type {kind!r}; use one of: {', '.join(DEVICE_TYPES)}")
    return kind  # narrowed to DeviceType by the check above


def _import_torch_npu() -> None:
    try:
        importlib.import_module("torch_npu")
    except ImportError as error:
        raise RuntimeError("device type npu needs the torch_npu package (Ascend CANN + torch_npu); "
                           "install it in this image, or use --device cpu / cuda") from error


def torch_device(kind: str, index: int = 0) -> torch.device:
    """The torch device for local accelerator ``index``, made current for this process."""
    import torch

    kind = _check_type(kind)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "npu":
        _import_torch_npu()
        torch.npu.set_device(index)  # type: ignore[attr-defined]
        return torch.device("npu", index)
    if not torch.cuda.is_available():
        raise RuntimeError("device type cuda requested but torch sees no CUDA device; "
                           "use a CUDA build of torch on a GPU node, or --device cpu")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def backend_for(kind: str) -> str:
    """The torch.distributed backend for a device type: hccl (npu), nccl (cuda), gloo (cpu)."""
    return BACKENDS[_check_type(kind)]


def group_backend(kind: str) -> str:
    """The ``backend`` argument of ``init_process_group`` for a device type.

    Accelerators get two backends in one group, ``cpu:gloo,<type>:<backend>``: the statistics
    reduce on the device (hccl/nccl), while the error sums, the saver's agreement objects and the
    barriers are host tensors and need gloo; a group with only nccl or hccl rejects a CPU tensor.
    """
    kind = _check_type(kind)
    backend = BACKENDS[kind]
    return backend if kind == "cpu" else f"cpu:{BACKENDS['cpu']},{kind}:{backend}"


def _accelerator_module(device: torch.device) -> object | None:
    import torch

    if device.type == "cuda":
        return torch.cuda
    if device.type == "npu":
        return torch.npu  # type: ignore[attr-defined]  # registered by torch_npu
    return None


def synchronize(device: torch.device) -> None:
    module = _accelerator_module(device)
    if module is not None:
        module.synchronize(device)  # type: ignore[attr-defined]


def empty_cache(device: torch.device) -> None:
    module = _accelerator_module(device)
    if module is not None:
        module.empty_cache()  # type: ignore[attr-defined]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  # glibc only
        return libc
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_memory(device: torch.device) -> None:
    """Hand memory freed since the last call back (once per decoder layer): the accelerator's
    cache, and the free pages of the host heap.

    glibc keeps the freed blocks of the per-layer tensors (1-30 MiB each) in its arenas once its
    dynamic mmap threshold has risen, and without a trim the RSS of a long run creeps up layer
    after layer although nothing is held (measured on bench/'s anchor model: +0.5 GB over 32
    layers). A fixed low mmap threshold also keeps RSS flat but made every activation a fresh
    mapping: 50% slower, so the trim it is.
    """
    empty_cache(device)
    trim_host_heap()


def trim_host_heap() -> None:
    """Return the free pages of the host heap to the system (glibc; nothing elsewhere). Called
    between the phases of a layer as well: a phase's freed temporaries otherwise stay resident
    under the next phase's peak (measured on bench/bench_moe.py's model: about 200 MiB of free
    heap still resident after the observation pass)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
KERNEL_CACHE_CAPACITY = 64
MATMUL_CACHE_ENV = "LRU_CACHE_CAPACITY"
MATMUL_CACHE_CAPACITY = 16


def limit_kernel_cache() -> None:
    """Cap the two caches of compiled CPU matmul kernels, unless the environment sets them: a MoE
    layer's experts each see another token count, so each cache fills with one kernel per shape,
    rarely reused.

    - oneDNN's primitive cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, 1024 by default) to 64.
      Measured on bench/bench_moe.py's model (8 samples, 1 rank): peak RSS 1706 -> 1418 MiB, and
      the RSS between layers stops creeping up ~50 MiB per layer.
    - ideep's primitive cache in front of it, through which torch runs bf16 ``linear``
      (``LRU_CACHE_CAPACITY``, 1024 by default; 0 crashes torch 2.13) to 16. Measured: 500 token
      counts of one bf16 [512, 1024] linear leave 156 MiB of heap in use at 1024 entries, 31 MiB at
      16, and the loop takes no longer; on bench_moe's model the heap in use between layers
      dropped by about 130 MiB.

    The kernels compute the same, so the output is the same bytes. Both libraries read their
    variable when they first build a kernel, so this runs before the first layer."""
    os.environ.setdefault(KERNEL_CACHE_ENV, str(KERNEL_CACHE_CAPACITY))
    os.environ.setdefault(MATMUL_CACHE_ENV, str(MATMUL_CACHE_CAPACITY))
    given = os.environ[MATMUL_CACHE_ENV].strip()
    if not given.isdigit() or int(given) < 1:  # 0 makes torch 2.13's bf16 linear crash (SIGSEGV)
        raise QuantJobError(f"{MATMUL_CACHE_ENV}={given!r} in the environment: it must be a positive count of "
                            "cached kernels (0 makes torch's CPU bf16 matmuls crash); unset it (the worker then "
                            f"uses {MATMUL_CACHE_CAPACITY}) or give a count of at least 1")


def staging_device(device: torch.device) -> torch.device:
    """Where the next decoder layer is read: host memory for an accelerator (read ahead while the
    device computes; the device holds one layer at a time, the read-ahead layer moves over when the
    loop takes it), ``device`` itself on cpu (there is no other memory; read after the release,
    ``reads_ahead_during_compute``)."""
    import torch

    return torch.device("cpu") if device.type != "cpu" else device


def reads_ahead_during_compute(device: torch.device) -> bool:
    """Whether the loop reads the next decoder layer while ``device`` computes the current one.
    On an accelerator it does: the read-ahead waits in host memory (``staging_device``), not
    beside the layer on the device. On cpu it does not: there the read-ahead would share the
    memory the layer computes in (one more layer at every phase's peak: bench/bench_moe.py's model
    measured 1197 -> ~990 MiB at 64 samples), while reading a layer from the page cache takes a
    small fraction of its compute; the next layer is read once the current one is released."""
    return device.type != "cpu"


def pinned(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) in page-locked memory, so its copy to accelerator ``device`` runs
    at the link's full speed; the tensor as it is on cpu, or where the runtime cannot pin."""
    if device.type == "cpu":
        return tensor
    try:
        return tensor.pin_memory()
    except RuntimeError:
        return tensor


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak memory allocated on an accelerator by this process; None on cpu (not tracked)."""
    module = _accelerator_module(device)
    if module is None:
        return None
    return int(module.max_memory_allocated(device))  # type: ignore[attr-defined]


def visible_devices_env(kind: str, index: int, inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment that restricts a launched process to accelerator ``index`` (empty for cpu).

    When ``inherited`` (the launcher's environment) already restricts the visible devices, e.g.
    ``CUDA_VISIBLE_DEVICES=2,3``, ``index`` counts within that list, as torch itself would.
    """
    name = VISIBLE_DEVICES_ENV[_check_type(kind)]
    if name is None:
        return {}
    current = (inherited or {}).get(name, "").strip()
    if not current:
        return {name: str(index)}
    visible = [part.strip() for part in current.split(",") if part.strip()]
    if index >= len(visible):
        raise ValueError(f"--device {kind}:{index}: only {len(visible)} device(s) are visible "
                         f"({name}={current}); list indices below {len(visible)} or widen {name}")
    return {name: visible[index]}


def load_extension(kind: str) -> None:
    """Import what a device type needs before its process group starts (torch_npu for npu)."""
    if _check_type(kind) == "npu":
        _import_torch_npu()


def total_memory_bytes(device: torch.device) -> int | None:
    """An accelerator's memory in bytes (what its properties report); None on cpu."""
    module = _accelerator_module(device)
    if module is None:
        return None
    return int(module.get_device_properties(device).total_memory)  # type: ignore[attr-defined]
