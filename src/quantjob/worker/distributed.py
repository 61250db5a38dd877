"""The process group as the loop sees it: world size 1 is the single-device case.

Every reduction here gives the same bits whatever the world size: min/max are exact in any
order, and sums are formed from per-sample partials gathered and added in global sample order
(never by all_reduce SUM, whose order depends on the ranks).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from quantjob.worker import device as devices
from quantjob.worker.device import DeviceSpec

log = logging.getLogger("quantjob.worker")

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
# Set by the local launcher: the index (within the visible devices) this rank uses.
LOCAL_DEVICE_ENV = "QUANTJOB_LOCAL_DEVICE"


@dataclass
class Group:
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _reduce(self, tensor: torch.Tensor, op: Any) -> torch.Tensor:
        if not self.distributed:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=op)
        return out

    def all_min(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._reduce(tensor, dist.ReduceOp.MIN)

    def all_max(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._reduce(tensor, dist.ReduceOp.MAX)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def ordered_sum(self, partials: dict[int, torch.Tensor]) -> torch.Tensor:
        """Sum per-sample partials {global sample index: tensor} over all ranks in global sample order.

        Partials must be small (a loss vector, a count): they travel as objects. The result is the
        same bits on every rank and for every world size.
        """
        merged: dict[int, torch.Tensor] = {}
        for part in self.all_gather_object({k: v.detach().cpu() for k, v in partials.items()}):
            merged.update(part)
        if not merged:
            raise ValueError("ordered_sum over no samples")
        keys = sorted(merged)
        total = merged[keys[0]].clone()
        for key in keys[1:]:
            total += merged[key]
        return total

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def shard_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """Round-robin split: rank r owns global samples r, r + W, r + 2W, ..."""
    return list(range(rank, num_samples, world_size))


@dataclass(frozen=True)
class GroupEnv:
    """Rank, world size and rendezvous address, as read from the environment."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; set it to a whole number") from None


def read_group_env(env: Mapping[str, str] | None = None) -> GroupEnv:
    """Rank from ``RANK`` (or an indexed Job's ``JOB_COMPLETION_INDEX``), world size from ``WORLD_SIZE``.

    ``MASTER_ADDR`` defaults to 127.0.0.1 only for world size 1 or under the local launcher (which
    sets ``QUANTJOB_LOCAL_DEVICE``); a multi-pod job must set it to rank 0's address.
    """
    env = os.environ if env is None else env
    rank = _env_int(env, "RANK")
    if rank is None:
        rank = _env_int(env, "JOB_COMPLETION_INDEX")
    world_size = _env_int(env, "WORLD_SIZE")
    if world_size is None:
        if rank not in (None, 0):
            raise ValueError(f"rank {rank} is set (RANK or JOB_COMPLETION_INDEX) but WORLD_SIZE is not; "
                             "set WORLD_SIZE to the number of ranks")
        world_size = 1
    rank = 0 if rank is None else rank
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE={world_size} must be at least 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} (RANK or JOB_COMPLETION_INDEX) is outside 0..{world_size - 1} "
                         f"(WORLD_SIZE={world_size})")
    addr = env.get("MASTER_ADDR", "").strip()
    if not addr:
        if world_size > 1 and LOCAL_DEVICE_ENV not in env:
            raise ValueError(f"WORLD_SIZE={world_size} but MASTER_ADDR is not set; set MASTER_ADDR (and "
                             "MASTER_PORT) to rank 0's address, e.g. <job>-0.<service>")
        addr = DEFAULT_MASTER_ADDR
    port = _env_int(env, "MASTER_PORT")
    port = DEFAULT_MASTER_PORT if port is None else port
    if not 0 < port < 65536:
        raise ValueError(f"MASTER_PORT={port} is not a TCP port; use 1..65535")
    return GroupEnv(rank, world_size, addr, port)


def wait_for_master(addr: str, port: int, timeout_s: float, *, interval_s: float = 1.0,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Retry DNS resolution of ``addr`` and a TCP connect to ``addr:port`` until one succeeds.

    Raises TimeoutError after ``timeout_s`` with the last failure, naming the address and the
    environment variables it came from.
    """
    deadline = clock() + timeout_s
    while True:
        try:
            with socket.create_connection((addr, port), timeout=max(0.1, min(5.0, timeout_s))):
                return
        except OSError as error:
            last = error
        if clock() >= deadline:
            kind = "does not resolve" if isinstance(last, socket.gaierror) else "does not answer"
            raise TimeoutError(
                f"rank 0 at {addr}:{port} (MASTER_ADDR:MASTER_PORT) {kind} after {timeout_s:.0f} s: {last}; "
                "check that rank 0 is running and that MASTER_ADDR/MASTER_PORT point at it")
        sleep(interval_s)


def init_group_from_env(device_type: str, *, timeout_s: float = 600.0,
                        collective_timeout_s: float = 3600.0) -> Group:
    """Join the process group described by the environment (DESIGN.md section 5, step 1).

    World size 1 starts no process group. Ranks above 0 first wait (up to ``timeout_s``) until
    rank 0's address resolves and answers, so a pod that starts before rank 0 does not fail.
    """
    found = read_group_env()
    if found.world_size == 1:
        return Group()
    devices.load_extension(device_type)
    backend = devices.backend_for(device_type)
    if found.rank > 0:
        wait_for_master(found.master_addr, found.master_port, timeout_s)
    dist.init_process_group(backend=backend, init_method=f"tcp://{found.master_addr}:{found.master_port}",
                            rank=found.rank, world_size=found.world_size,
                            timeout=timedelta(seconds=collective_timeout_s))
    log.info("rank %d of %d joined the process group (%s, rendezvous %s:%d)", found.rank, found.world_size,
             backend, found.master_addr, found.master_port)
    return Group(found.rank, found.world_size)


def local_device_index(spec: DeviceSpec, group: Group) -> int:
    """The local accelerator index this rank uses.

    Under the local launcher, ``QUANTJOB_LOCAL_DEVICE`` (it restricts visibility, so usually 0);
    in a pod given ``--device npu`` the one device it sees (index 0); otherwise the listed index
    at ``LOCAL_RANK`` (or the rank) modulo the number listed.
    """
    override = _env_int(os.environ, LOCAL_DEVICE_ENV)
    if override is not None:
        return override
    if spec.count == 1:
        return spec.indices[0]
    local_rank = _env_int(os.environ, "LOCAL_RANK")
    return spec.indices[(group.rank if local_rank is None else local_rank) % spec.count]


def close_group() -> None:
    """Leave the process group, if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
