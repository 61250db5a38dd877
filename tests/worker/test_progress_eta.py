"""The ETA ``quantjob quantize`` prints after each layer: the run's own pace, resumed layers excluded."""

from __future__ import annotations

import io
import logging

import pytest

from quantjob.api.durations import format_duration
from quantjob.worker.progress import LayerClock, TerminalProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 45.4, 725, 11220, 187200)] == ["0s", "45s", "12m05s", "3h07m", "2d04h"]


def test_resumed_layers_do_not_shorten_the_estimate() -> None:
    clock = Clock()
    layers = LayerClock(clock)
    layers.start(resumed_from=20)  # 20 layers committed by an earlier attempt, none timed now
    assert layers.eta(20, 30) is None
    clock.now += 60.0
    layers.layer_done(21)
    clock.now += 80.0
    layers.layer_done(22)
    assert layers.seconds_per_layer == pytest.approx(70.0) and layers.eta(22, 30) == pytest.approx(560.0)
    assert layers.eta_text(22, 30) == ", ETA 9m20s" and layers.eta_text(30, 30) == ""


def test_each_layer_line_carries_the_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = TerminalProgress(stream=io.StringIO(), clock=clock)  # not a terminal: log lines
    with caplog.at_level(logging.INFO, logger="quantjob.worker"):
        progress.start(4, resumed_from=1)
        clock.now += 30.0
        progress.layer_done(2, 4, 0.01)
        clock.now += 30.0
        progress.layer_done(3, 4, 0.02)
        progress.layer_done(4, 4, 0.03)
    lines = [r.getMessage() for r in caplog.records]
    assert "resuming after 1 committed" in lines[0]
    assert lines[1].endswith("30.0s, ETA 1m00s)") and lines[2].endswith("60.0s, ETA 30s)")
    assert "ETA" not in lines[3]


def test_a_terminal_bar_shows_the_eta() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock, stream = Clock(), Tty()
    progress = TerminalProgress(stream=stream, clock=clock)
    progress.start(10)
    clock.now += 12.0
    progress.layer_done(1, 10, None)
    assert stream.getvalue().rstrip().endswith("1/10 layers  12.0s, ETA 1m48s")
