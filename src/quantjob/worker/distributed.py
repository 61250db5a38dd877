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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from quantjob.worker import device as devices
from quantjob.worker.device import DeviceSpec
from quantjob.worker.group_env import LOCAL_DEVICE_ENV, env_int, read_group_env

log = logging.getLogger("quantjob.worker")



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

    def all_min(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise minimum over ranks (exact in any order; a maximum is ``-all_min(-x)``)."""
        if not self.distributed:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.MIN)
        return out

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def ordered_sum(self, partials: dict[int, torch.Tensor], num_samples: int, width: int) -> torch.Tensor:
        """Sum per-sample partials ``{global sample index: float vector of width}`` over all ranks, in
        global sample order, in float64; the same bits on every rank and for every world size.

        One ``all_reduce``: every rank writes its partials into their rows of a zero
        ``[num_samples, width]`` tensor. Each row has a single contribution, so the reduction is
        exact in any order (``x + 0 = x``); the rows are then added in sample order.
        """
        if num_samples < 1:
            raise ValueError("ordered_sum over no samples")
        rows = torch.zeros(num_samples, width, dtype=torch.float64)
        for index, partial in partials.items():
            rows[index] = partial.detach().to("cpu", torch.float64).reshape(width)
        if self.distributed:
            dist.all_reduce(rows, op=dist.ReduceOp.SUM)
        total = rows[0].clone()
        for row in rows[1:]:
            total += row
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


def wait_for_master(addr: str, port: int, timeout_s: float, *, interval_s: float = 1.0,
                    first_interval_s: float = 0.05, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Retry DNS resolution of ``addr`` and a TCP connect to ``addr:port`` until one succeeds.

    The pause between attempts starts at ``first_interval_s`` and doubles up to ``interval_s``:
    local ranks find rank 0 within tens of milliseconds, pods waiting for DNS poll once a second.

    Raises TimeoutError after ``timeout_s`` with the last failure, naming the address and the
    environment variables it came from.
    """
    deadline = clock() + timeout_s
    pause = min(first_interval_s, interval_s)
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
        sleep(pause)
        pause = min(interval_s, pause * 2)


def init_group_from_env(device_type: str, *, timeout_s: float = 600.0,
                        collective_timeout_s: float = 3600.0) -> Group:
    """Join the process group described by the environment (docs/design.md, section 4, step 1).

    World size 1 starts no process group. Ranks above 0 first wait (up to ``timeout_s``) until
    rank 0's address resolves and answers, so a pod that starts before rank 0 does not fail.
    """
    found = read_group_env()
    if found.world_size == 1:
        return Group()
    devices.load_extension(device_type)
    backend = devices.group_backend(device_type)
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
    override = env_int(os.environ, LOCAL_DEVICE_ENV)
    if override is not None:
        return override
    if spec.count == 1:
        return spec.indices[0]
    local_rank = env_int(os.environ, "LOCAL_RANK")
    return spec.indices[(group.rank if local_rank is None else local_rank) % spec.count]


def close_group() -> None:
    """Leave the process group, if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
