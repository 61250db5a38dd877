"""Rank, world size and rendezvous address from the environment (no torch: the launcher and the
CLI read them before any heavy import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
# Set by the local launcher: the index (within the visible devices) this rank uses.
LOCAL_DEVICE_ENV = "QUANTJOB_LOCAL_DEVICE"
# Seconds a collective waits for the slowest rank (``--collective_timeout`` wins over it).
COLLECTIVE_TIMEOUT_ENV = "QUANTJOB_COLLECTIVE_TIMEOUT"
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class GroupEnv:
    """Rank, world size and rendezvous address, as read from the environment."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int


def env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; set it to a whole number") from None


def read_group_env(env: Mapping[str, str] | None = None) -> GroupEnv:
    """Rank from ``RANK`` (or an indexed Job's ``JOB_COMPLETION_INDEX``), world size from ``WORLD_SIZE``.

    Nothing set is the single-process case. A rank needs a world size and a world size above 1
    needs a rank: half a group is refused rather than guessed.

    ``MASTER_ADDR`` defaults to 127.0.0.1 only for world size 1 or under the local launcher (which
    sets ``QUANTJOB_LOCAL_DEVICE``); a multi-pod job must set it to rank 0's address.
    """
    env = os.environ if env is None else env
    rank = env_int(env, "RANK")
    if rank is None:
        rank = env_int(env, "JOB_COMPLETION_INDEX")
    world_size = env_int(env, "WORLD_SIZE")
    if world_size is None:
        if rank is not None:
            raise ValueError(f"rank {rank} is set (RANK or JOB_COMPLETION_INDEX) but WORLD_SIZE is not; "
                             "set WORLD_SIZE to the number of ranks")
        world_size = 1
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE={world_size} must be at least 1")
    if rank is None:
        if world_size > 1:  # every rank would take itself for rank 0
            raise ValueError(f"WORLD_SIZE={world_size} but neither RANK nor JOB_COMPLETION_INDEX is set; "
                             "set RANK to this process's rank (an indexed Job sets JOB_COMPLETION_INDEX)")
        rank = 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} (RANK or JOB_COMPLETION_INDEX) is outside 0..{world_size - 1} "
                         f"(WORLD_SIZE={world_size})")
    addr = env.get("MASTER_ADDR", "").strip()
    if not addr:
        if world_size > 1 and LOCAL_DEVICE_ENV not in env:
            raise ValueError(f"WORLD_SIZE={world_size} but MASTER_ADDR is not set; set MASTER_ADDR (and "
                             "MASTER_PORT) to rank 0's address, e.g. <job>-0.<service>")
        addr = DEFAULT_MASTER_ADDR
    port = env_int(env, "MASTER_PORT")
    port = DEFAULT_MASTER_PORT if port is None else port
    if not 0 < port < 65536:
        raise ValueError(f"MASTER_PORT={port} is not a TCP port; use 1..65535")
    return GroupEnv(rank, world_size, addr, port)


def collective_timeout_s(flag: float | None, env: Mapping[str, str] | None = None) -> float:
    """The collective timeout in seconds: ``--collective_timeout``, else ``QUANTJOB_COLLECTIVE_TIMEOUT``
    (an operator setting), else ``DEFAULT_COLLECTIVE_TIMEOUT_S``. ValueError names a bad value."""
    if flag is not None:
        return float(flag)
    env = os.environ if env is None else env
    raw = env.get(COLLECTIVE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_COLLECTIVE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"environment variable {COLLECTIVE_TIMEOUT_ENV}={raw!r} must be a positive number of "
                         "seconds, e.g. 600")
    return value
