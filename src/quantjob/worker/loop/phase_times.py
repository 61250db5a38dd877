"""Where a run's time went on this rank: wall seconds per phase of the loop, printed at the end.

Phases nest (a processor that observes the layer again): the inner phase's time is charged to it
alone, never to the outer one as well, so the phases add up to the time they cover. Timings stay in
the log; they never enter the output, whose bytes must not depend on the machine or the world size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# the line ``quantjob quantize`` prints before its summary: rank 0's phases (bench/ reads it)
LOG_PREFIX = "where the time went (rank 0): "
# the order phases are printed in (one not listed comes after these)
ORDER = ("start", "embedding", "loading", "observation", "processors", "quantized forward", "replay",
         "saving", "release", "finish")


class PhaseTimes:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._since = 0.0

    def _charge(self, now: float) -> None:
        if self._stack:
            name = self._stack[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._since
        self._since = now

    def add(self, name: str, seconds: float) -> None:
        """Charge ``seconds`` measured outside ``phase`` (a span no ``with`` block fits around)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._charge(self._clock())
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge(self._clock())
            self._stack.pop()


def format_phase_times(seconds: dict[str, float], total: float) -> str:
    """``start 4.1 s, observation 57.0 s, ..., other 0.2 s``: every phase that took time, in loop
    order, then what no phase covered."""
    names = sorted(seconds, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    parts = [f"{name} {seconds[name]:.1f} s" for name in names if seconds[name] >= 0.05]
    other = total - sum(seconds.values())
    if other >= 0.05:
        parts.append(f"other {other:.1f} s")
    return ", ".join(parts)


def parse_phase_times(text: str) -> dict[str, float]:
    """The phases of a ``format_phase_times`` text (``other`` included)."""
    found: dict[str, float] = {}
    for part in text.split(", "):
        name, _, value = part.rpartition(" ")[0].rpartition(" ")
        found[name] = float(value)
    return found
