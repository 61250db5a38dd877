"""The process group as the loop sees it: world size 1 is the single-device case.

Every reduction here gives the same bits whatever the world size: min/max are exact in any
order, and sums are formed from per-sample partials gathered and added in global sample order
(never by all_reduce SUM, whose order depends on the ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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
