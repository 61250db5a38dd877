"""Progress reporting: a small protocol the loop calls on rank 0, and the terminal implementation
(a progress bar when stderr is a terminal, plain log lines otherwise), plus the error table.

``default_progress(group)`` picks the reporter; the operator adds a Kubernetes status reporter
(chosen when ``QUANTJOB_NAME`` is set) by extending that function.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from quantjob.api.durations import format_duration

if TYPE_CHECKING:
    from quantjob.worker.group.distributed import ProcessGroup

log = logging.getLogger("quantjob.worker")


class ProgressHook(Protocol):
    def start(self, total_layers: int, resumed_from: int = 0) -> None: ...

    def layer_done(self, done: int, total: int, layer_error: float | None) -> None: ...

    def finish(self, ok: bool, message: str = "") -> None: ...


class LayerClock:
    """The current run's mean seconds per decoder layer and the time left at that pace.

    Only layers this run quantized count: ``start`` gives the layers it resumed past, which took no
    time now and would make the estimate too short. The operator shows the same estimate (from
    ``secondsPerLayer``, which the Kubernetes reporter sends) in ``kubectl get quantjobs``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._started = clock()
        self._first = 0
        self.seconds_per_layer: float | None = None

    def start(self, resumed_from: int = 0) -> None:
        self._started, self._first, self.seconds_per_layer = self.clock(), resumed_from, None

    def layer_done(self, done: int) -> None:
        ran = done - self._first
        if ran > 0:
            self.seconds_per_layer = (self.clock() - self._started) / ran

    def eta(self, done: int, total: int) -> float | None:
        """Seconds left for ``total - done`` layers, or None before the first measured layer."""
        return None if self.seconds_per_layer is None else self.seconds_per_layer * max(total - done, 0)

    def eta_text(self, done: int, total: int) -> str:
        left = self.eta(done, total)
        return "" if left is None or done >= total else f", ETA {format_duration(left)}"


class TerminalProgress:
    """``[#####.....] 5/10 layers  err 1.2e-02  12.3s`` on a TTY; one log line per layer otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self._started = clock()
        self.layers = LayerClock(clock)

    def start(self, total_layers: int, resumed_from: int = 0) -> None:
        self._started = self.clock()
        self.layers.start(resumed_from)
        if self.tty:
            self._bar(resumed_from, total_layers, None)
        elif resumed_from:
            log.info("quantizing %d decoder layers (resuming after %d committed)", total_layers, resumed_from)
        else:
            log.info("quantizing %d decoder layers", total_layers)

    def layer_done(self, done: int, total: int, layer_error: float | None) -> None:
        self.layers.layer_done(done)
        if self.tty:
            self._bar(done, total, layer_error)
        else:
            error = "-" if layer_error is None else f"{layer_error:.3e}"
            log.info("layer %d/%d done (relative output error %s, %.1fs%s)", done, total, error,
                     self.clock() - self._started, self.layers.eta_text(done, total))

    def finish(self, ok: bool, message: str = "") -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        if message:
            (log.info if ok else log.error)("%s", message)

    def _bar(self, done: int, total: int, layer_error: float | None) -> None:
        filled = self.width * done // max(total, 1)
        error = "" if layer_error is None else f"  err {layer_error:.2e}"
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} layers"
                          f"{error}  {self.clock() - self._started:.1f}s{self.layers.eta_text(done, total)}")
        self.stream.flush()


# Under the local launcher, rank 0's output is a pipe: it sends progress as marked lines and the
# launcher, which owns the terminal, draws the bar (or logs a line when it has no terminal).
PIPE_ENV = "QUANTJOB_PROGRESS_PIPE"
PIPE_MARKER = "@quantjob-progress-event "


class PipeProgress:
    """Progress as one marked JSON line per event on ``stream``, for the launcher to render."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def _send(self, **event: Any) -> None:
        self.stream.write(PIPE_MARKER + json.dumps(event) + "\n")
        self.stream.flush()

    def start(self, total_layers: int, resumed_from: int = 0) -> None:
        self._send(event="start", total=total_layers, resumed_from=resumed_from)

    def layer_done(self, done: int, total: int, layer_error: float | None) -> None:
        self._send(event="layer", done=done, total=total, error=layer_error)

    def finish(self, ok: bool, message: str = "") -> None:
        self._send(event="finish", ok=ok, message=message)


def replay_event(line: str, hook: ProgressHook) -> bool:
    """Forward a ``PipeProgress`` line to ``hook``; False when ``line`` is not a progress line."""
    if not line.startswith(PIPE_MARKER):
        return False
    event = json.loads(line[len(PIPE_MARKER):])
    if event["event"] == "start":
        hook.start(event["total"], event.get("resumed_from", 0))
    elif event["event"] == "layer":
        hook.layer_done(event["done"], event["total"], event["error"])
    else:
        hook.finish(event["ok"], event.get("message", ""))
    return True


class Fanout:
    """Several reporters as one (a pod logs its progress and patches its QuantJob)."""

    def __init__(self, *hooks: ProgressHook) -> None:
        self.hooks = hooks

    def start(self, total_layers: int, resumed_from: int = 0) -> None:
        for hook in self.hooks:
            hook.start(total_layers, resumed_from)

    def layer_done(self, done: int, total: int, layer_error: float | None) -> None:
        for hook in self.hooks:
            hook.layer_done(done, total, layer_error)

    def finish(self, ok: bool, message: str = "") -> None:
        for hook in self.hooks:
            hook.finish(ok, message)


def default_progress(group: ProcessGroup) -> ProgressHook | None:
    """The reporter for this process: only rank 0 reports.

    Under the local launcher: events for the launcher to render. In a QuantJob pod
    (``QUANTJOB_NAME`` set): log lines plus ``status.progress`` patches. Otherwise: the terminal.
    """
    if not group.is_main:
        return None
    if os.environ.get(PIPE_ENV) == "1":
        return PipeProgress()
    from quantjob.worker.progress_k8s import progress_from_environment

    kubernetes = progress_from_environment()
    return Fanout(TerminalProgress(), kubernetes) if kubernetes is not None else TerminalProgress()


def format_error_table(table: dict[str, Any]) -> str:
    """The ``quant_errors.json`` content as a text table."""
    rows = [f"{'layer':>5}  {'quantized linears':>17}  relative output error",
            f"{'-' * 5}  {'-' * 17}  {'-' * 21}"]
    for row in table["layers"]:
        error = "-" if row["relative_error"] is None else f"{row['relative_error']:.4e}"
        rows.append(f"{row['layer']:>5}  {row['quantized_linears']:>17}  {error}")
    rows.append(f"(||y_q - y|| / ||y|| of each decoder layer on the first {table['samples']} calibration samples)")
    return "\n".join(rows)
