"""The process group as the loop sees it: world size 1 is the single-device case.

Every reduction here gives the same bits whatever the world size: min/max are exact in any
order, and sums are formed from per-sample partials gathered and added in global sample order
(never by all_reduce SUM, whose order depends on the ranks).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from quantjob.worker.errors import GroupError
from quantjob.worker.group import device as devices
from quantjob.worker.group.device import DeviceSpec
from quantjob.worker.group.group_env import (
    COLLECTIVE_TIMEOUT_ENV,
    DEFAULT_COLLECTIVE_TIMEOUT_S,
    LOCAL_DEVICE_ENV,
    env_int,
    read_group_env,
)
from quantjob.worker.group.group_watch import GroupWatch

log = logging.getLogger("quantjob.worker")

# How long rank 0 waits for every rank to join; the collective timeout applies once they have.
JOIN_TIMEOUT_S = 3600.0
_WATCH: GroupWatch | None = None  # this process's heartbeat, stopped by close_group

T = TypeVar("T")
K = TypeVar("K")


@dataclass
class ProcessGroup:
    """This rank's view of the group. Every collective goes through ``_collective``: it waits at
    most ``collective_timeout_s`` for the slowest rank, and a failure (a timeout, a lost peer)
    becomes a ``GroupError`` that names the ranks holding the group up (``GroupWatch``)."""

    rank: int = 0
    world_size: int = 1
    collective_timeout_s: float = field(default=DEFAULT_COLLECTIVE_TIMEOUT_S, compare=False)
    where: str = field(default="", compare=False)  # what the loop is doing ("layer 3"), for messages
    torch_group: Any = field(default=None, compare=False, repr=False)  # torch.distributed's own group (None: the default)
    watch: GroupWatch | None = field(default=None, compare=False, repr=False)
    _step: int = field(default=0, compare=False, repr=False)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _collective(self, name: str, action: Callable[[], T]) -> T:
        self._step += 1
        what = f"{name} during {self.where}" if self.where else name
        if self.watch is not None:
            self.watch.mark(self._step, what)
        try:
            return action()
        except RuntimeError as error:  # torch.distributed's DistError and the backends' own errors
            message = self._failure(what, error)
            if self.is_main:
                self._let_the_others_see()
            raise GroupError(message) from error

    def _let_the_others_see(self) -> None:
        """Rank 0 serves the store the other ranks read to name the culprit: close this group's
        connections, so every rank still waiting fails now rather than at its timeout, and stay
        up while they read the store."""
        try:
            dist.destroy_process_group(self.torch_group)
        except (RuntimeError, ValueError, AssertionError):  # already torn down: nothing to release
            pass
        if self.watch is not None:
            time.sleep(self.watch.diagnosis_s + 2 * self.watch.heartbeat_s)  # the others' diagnosis

    def _failure(self, what: str, error: RuntimeError) -> str:
        text = " ".join(str(error).split())
        reason = text[:300] + ("..." if len(text) > 300 else "")
        timed_out = "timed out" in text.lower() or "timeout" in text.lower()
        head = (f"rank {self.rank}: collective {self._step} ({what}) timed out after {self.collective_timeout_s:.0f} s"
                if timed_out else f"rank {self.rank}: collective {self._step} ({what}) failed, a peer is lost")
        who = self.watch.diagnose(self._step) if self.watch is not None else "no heartbeat to name the rank"
        return (f"{head}: {who} [{reason}]; the group stops and is restarted from the last committed layer. "
                f"Raise --collective_timeout (or {COLLECTIVE_TIMEOUT_ENV}) if a rank legitimately needs longer "
                "between collectives")

    def all_min(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise minimum over ranks (exact in any order; a maximum is ``-all_min(-x)``)."""
        if not self.distributed:
            return tensor
        out = tensor.clone()
        self._collective("all_min", lambda: dist.all_reduce(out, op=dist.ReduceOp.MIN, group=self.torch_group))
        return out

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._collective("all_gather_object", lambda: dist.all_gather_object(out, obj, group=self.torch_group))
        return out

    def all_gather_tensors(self, tensors: dict[K, torch.Tensor]) -> list[dict[K, torch.Tensor]]:
        """Every rank's ``tensors`` (on the CPU, bit for bit), in rank order.

        Each rank's tensors travel as one byte buffer and a small index: pickling each tensor on
        its own (``all_gather_object`` of a dict of tensors) costs a serialisation per tensor, which
        for a layer's probe rows (a few hundred small tensors) took longer than the transfer.
        """
        if not self.distributed:
            return [{key: tensor.detach().cpu() for key, tensor in tensors.items()}]
        return [unpack_tensors(part) for part in self.all_gather_object(pack_tensors(tensors))]

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
            self._collective("ordered_sum", lambda: dist.all_reduce(rows, op=dist.ReduceOp.SUM,
                                                                    group=self.torch_group))
        total = rows[0].clone()
        for row in rows[1:]:
            total += row
        return total

    def barrier(self) -> None:
        if self.distributed:
            self._collective("barrier", lambda: dist.barrier(group=self.torch_group))

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        self._collective("broadcast_object",
                         lambda: dist.broadcast_object_list(box, src=src, group=self.torch_group))
        return box[0]


PackedTensors = tuple[list[tuple[Any, str, tuple[int, ...], int]], bytes]  # (key, dtype, shape, offset), data


def pack_tensors(tensors: dict[Any, torch.Tensor]) -> PackedTensors:
    """``tensors`` as an index and one buffer of their bytes (each starting at a multiple of 8)."""
    index: list[tuple[Any, str, tuple[int, ...], int]] = []
    chunks: list[torch.Tensor] = []
    offset = 0
    for key, tensor in tensors.items():
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        index.append((key, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset))
        padding = -raw.numel() % 8
        chunks += [raw, torch.zeros(padding, dtype=torch.uint8)] if padding else [raw]
        offset += raw.numel() + padding
    data = torch.cat(chunks).numpy().tobytes() if chunks else b""
    return index, data


def unpack_tensors(packed: PackedTensors) -> dict[Any, torch.Tensor]:
    """The tensors of :func:`pack_tensors`, each its own copy."""
    index, data = packed
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    out: dict[Any, torch.Tensor] = {}
    for key, dtype_name, shape, offset in index:
        dtype = getattr(torch, dtype_name)
        size = math.prod(shape) * dtype.itemsize
        out[key] = buffer[offset:offset + size].view(dtype).reshape(shape).clone()
    return out


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
                        collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
                        join_timeout_s: float = JOIN_TIMEOUT_S) -> ProcessGroup:
    """Join the process group described by the environment (docs/design.md, section 4, step 1).

    World size 1 starts no process group. Ranks above 0 first wait (up to ``timeout_s``) until
    rank 0's address resolves and answers, so a pod that starts before rank 0 does not fail.
    Rank 0 waits up to ``join_timeout_s`` for every rank to join (pods may start minutes apart);
    once joined, every collective waits at most ``collective_timeout_s`` for the slowest rank.
    """
    global _WATCH
    found = read_group_env()
    if found.world_size == 1:
        return ProcessGroup(collective_timeout_s=collective_timeout_s)
    devices.load_extension(device_type)
    backend = devices.group_backend(device_type)
    if found.rank > 0:
        wait_for_master(found.master_addr, found.master_port, timeout_s)
    dist.init_process_group(backend=backend, init_method=f"tcp://{found.master_addr}:{found.master_port}",
                            rank=found.rank, world_size=found.world_size,
                            timeout=timedelta(seconds=max(join_timeout_s, collective_timeout_s)))
    # the group the work runs in: the same ranks and backends, with the collective timeout
    work = dist.new_group(timeout=timedelta(seconds=collective_timeout_s))
    _WATCH = GroupWatch.connect(found.master_addr, found.master_port, found.rank, found.world_size)
    log.info("rank %d of %d joined the process group (%s, rendezvous %s:%d, collective timeout %.0f s)",
             found.rank, found.world_size, backend, found.master_addr, found.master_port, collective_timeout_s)
    return ProcessGroup(found.rank, found.world_size, collective_timeout_s, torch_group=work, watch=_WATCH)


def local_device_index(spec: DeviceSpec, group: ProcessGroup) -> int:
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
    """Leave the process group, if one was started (and stop this rank's heartbeat)."""
    global _WATCH
    if _WATCH is not None:
        _WATCH.close()
        _WATCH = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
