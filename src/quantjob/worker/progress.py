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
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from quantjob.worker.distributed import Group

log = logging.getLogger("quantjob.worker")


class ProgressHook(Protocol):
    def start(self, total_layers: int, resumed_from: int = 0) -> None: ...

    def layer_done(self, done: int, total: int, layer_error: float | None) -> None: ...

    def finish(self, ok: bool, message: str = "") -> None: ...


class TerminalProgress:
    """``[#####.....] 5/10 layers  err 1.2e-02  12.3s`` on a TTY; one log line per layer otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._started = time.monotonic()

    def start(self, total_layers: int, resumed_from: int = 0) -> None:
        self._started = time.monotonic()
        if self.tty:
            self._bar(0, total_layers, None)
        else:
            log.info("quantizing %d decoder layers", total_layers)

    def layer_done(self, done: int, total: int, layer_error: float | None) -> None:
        if self.tty:
            self._bar(done, total, layer_error)
        else:
            error = "-" if layer_error is None else f"{layer_error:.3e}"
            log.info("layer %d/%d done (relative output error %s, %.1fs)", done, total, error,
                     time.monotonic() - self._started)

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
                          f"{error}  {time.monotonic() - self._started:.1f}s")
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


def default_progress(group: Group) -> ProgressHook | None:
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
