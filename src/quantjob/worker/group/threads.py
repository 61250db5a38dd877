"""Intra-op threads, and what besides the inputs decides the output bits.

The output is byte-identical for any world size when every rank computes alike: the same device
kind (and model) and the same intra-op thread count per rank, because a matrix kernel or a
reduction may split its work, and so its rounding, by thread count. Where this module can make
the arithmetic independent of the thread count cheaply, it does:

- the host-side sums of the loop (the per-layer error) are ``sum_of_squares``: one row per
  thread, then an exact ``math.fsum``; a plain ``.sum()`` over a large tensor splits by threads;
- MKL's strict reproducibility mode (``MKL_CBWR=AUTO,STRICT``, unless set) makes its float32
  matrix products independent of the thread count.

bfloat16 and float16 products go through oneDNN, which gives no such guarantee on every CPU, so
``--device cpu`` and ``--device cpu:0,1`` can still differ there unless ``OMP_NUM_THREADS`` gives
every rank the same count. The output's provenance records each rank's device kind and threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the launcher imports this module without torch
    import torch

MKL_REPRODUCIBLE = ("MKL_CBWR", "AUTO,STRICT")


def reproducible_math_env(env: dict[str, str] | os._Environ[str]) -> None:
    """Ask MKL for results independent of the thread count, unless the user chose a mode. Must
    run before torch is imported: MKL reads it once."""
    name, value = MKL_REPRODUCIBLE
    if not env.get(name, "").strip():
        env[name] = value


def threads_per_rank(local_ranks: int, cores: int, env: Mapping[str, str]) -> int:
    """Intra-op threads of each of ``local_ranks`` ranks sharing ``cores``: ``OMP_NUM_THREADS`` when
    set, else an even share (at least 1). One rule for a single process and for every launched rank."""
    raw = env.get("OMP_NUM_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, cores // max(1, local_ranks))


def sum_of_squares(x: torch.Tensor) -> float:
    """The sum of ``x**2`` in float64 with the same bits for any thread count: each row (last
    dimension) is reduced by one thread, and the row sums are added exactly."""
    rows = x.detach().double().pow(2).reshape(-1, x.shape[-1] if x.dim() else 1).sum(dim=-1)
    return math.fsum(rows.tolist())
