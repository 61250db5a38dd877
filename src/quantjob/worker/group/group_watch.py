"""Which rank holds the group up, for the message of a failed collective.

Every rank keeps two marks in the rendezvous store (the TCP store rank 0 serves for
``torch.distributed``): the last collective it entered (a step number and what it was for; a
store ``set`` sends without waiting for an answer, so the loop never waits on the store) and a
heartbeat counter that a background thread raises every ``HEARTBEAT_S`` seconds, each on a
client connection of its own. When a collective times out or loses a peer, the rank
reads the marks: a rank whose heartbeat does not move does not respond (stopped with SIGSTOP, a
process that no longer runs Python, or one that is gone); a rank whose step is behind this one's
never reached the collective. When the store itself does not answer, rank 0 (which serves it)
is the one that is stopped or gone.

Marks are best effort: a store that cannot be reached never fails or delays a run, it only leaves
the message without names. Every store access that could wait on a stopped rank 0 runs on a
thread of its own, given up after a bounded time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

log = logging.getLogger("quantjob.worker")

PREFIX = "quantjob/watch"
HEARTBEAT_S = 2.0
STORE_TIMEOUT_S = 10.0
_STORE_ERRORS = (RuntimeError, OSError, TimeoutError)

StoreFactory = Callable[[], Any]  # a new client of the rendezvous store


class GroupWatch:
    """This rank's marks in the rendezvous store, and the diagnosis of a stalled group."""

    def __init__(self, connect: StoreFactory, rank: int, world_size: int, *,
                 heartbeat_s: float = HEARTBEAT_S, store_timeout_s: float = STORE_TIMEOUT_S) -> None:
        self._connect = connect
        self.rank = rank
        self.world_size = world_size
        self.heartbeat_s = heartbeat_s
        self.store_timeout_s = store_timeout_s
        try:
            self._marks: Any = connect()
        except _STORE_ERRORS as error:
            log.warning("rank %d: cannot mark collectives in the rendezvous store (%s)", rank, error)
            self._marks = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="quantjob-heartbeat", daemon=True)
        self._thread.start()

    @classmethod
    def connect(cls, addr: str, port: int, rank: int, world_size: int) -> GroupWatch:
        """A watch on the store that rank 0 serves at ``addr:port``."""
        import torch.distributed as dist

        def client() -> Any:
            return dist.TCPStore(addr, port, is_master=False, timeout=timedelta(seconds=STORE_TIMEOUT_S),
                                 wait_for_workers=False)

        return cls(client, rank, world_size)

    def _key(self, kind: str, rank: int) -> str:
        return f"{PREFIX}/{kind}/{rank}"

    def _beat(self) -> None:
        store = None
        while not self._stopped.is_set():
            try:
                store = store or self._connect()
                store.add(self._key("beat", self.rank), 1)  # waits for rank 0's answer: off the loop
            except _STORE_ERRORS:  # rank 0 (the store) stopped or already gone: keep trying quietly
                store = None
            self._stopped.wait(self.heartbeat_s)

    def mark(self, step: int, what: str) -> None:
        """This rank enters collective number ``step``, for ``what``."""
        if self._marks is None:
            return
        try:
            self._marks.set(self._key("step", self.rank), f"{step} {what}")
        except _STORE_ERRORS:
            self._marks = None

    @property
    def diagnosis_s(self) -> float:
        """How long ``diagnose`` watches the heartbeats (it may take ``store_timeout_s`` more)."""
        return 2.5 * self.heartbeat_s

    def diagnose(self, step: int) -> str:
        """Which ranks hold collective ``step`` up, in words."""
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self._diagnose(step)), name="quantjob-diagnosis",
                                  daemon=True)
        reader.start()
        reader.join(self.diagnosis_s + self.store_timeout_s + self.heartbeat_s)
        if found:
            return found[0]
        return (f"the rendezvous store that rank 0 serves does not answer within {self.store_timeout_s:.0f} s: "
                "rank 0 is stopped, hung or gone")

    def _diagnose(self, step: int) -> str:
        try:
            store = self._connect()
            before = self._beats(store)
            time.sleep(self.diagnosis_s)
            after = self._beats(store)
            steps = self._steps(store)
        except _STORE_ERRORS as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            return (f"the rendezvous store that rank 0 serves does not answer ({first}): rank 0 is stopped, "
                    "hung or gone")
        others = [rank for rank in range(self.world_size) if rank != self.rank]
        silent = [rank for rank in others if after[rank] == before[rank]]
        behind = [rank for rank in others if rank not in silent and _before(steps[rank], step)]
        parts = [f"rank {rank} does not respond (its heartbeat stopped: the process is stopped, hung or gone), "
                 f"{_where(steps[rank])}" for rank in silent]
        parts += [f"rank {rank} is running but never reached this collective, {_where(steps[rank])}"
                  for rank in behind]
        if not parts:
            return "every other rank reached this collective and is alive: a peer may have exited; see its log"
        return "; ".join(parts)

    def _beats(self, store: Any) -> list[int]:
        return [int(store.add(self._key("beat", rank), 0)) for rank in range(self.world_size)]

    def _steps(self, store: Any) -> list[tuple[int, str] | None]:
        found: list[tuple[int, str] | None] = []
        for rank in range(self.world_size):
            key = self._key("step", rank)
            if not store.check([key]):
                found.append(None)
                continue
            number, _, what = bytes(store.get(key)).decode("utf-8", "replace").partition(" ")
            found.append((int(number), what))
        return found

    def close(self) -> None:
        self._stopped.set()


def _where(step: tuple[int, str] | None) -> str:
    if step is None:
        return "before its first collective"
    return f"last at collective {step[0]} ({step[1]})"


def _before(mark: tuple[int, str] | None, step: int) -> bool:
    return mark is None or mark[0] < step
