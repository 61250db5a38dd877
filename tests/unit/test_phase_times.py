"""The per-phase timer of the loop: nested phases charge their own time only, and the printed line
reads back."""

from __future__ import annotations

from quantjob.worker.loop.phase_times import PhaseTimes, format_phase_times, parse_phase_times


def test_nested_phases_are_charged_once() -> None:
    now = [0.0]
    times = PhaseTimes(clock=lambda: now[0])
    with times.phase("processors"):
        now[0] = 1.0
        with times.phase("observation"):  # a processor observing the layer again
            now[0] = 4.0
        now[0] = 4.5
    with times.phase("observation"):
        now[0] = 6.5
    now[0] = 10.0  # outside every phase: charged to none
    times.add("start", 2.0)
    assert times.seconds == {"processors": 1.5, "observation": 5.0, "start": 2.0}


def test_the_line_lists_phases_in_loop_order_with_what_none_covered() -> None:
    seconds = {"finish": 0.9, "observation": 57.04, "start": 4.26, "quantized forward": 8.3, "saving": 0.01}
    text = format_phase_times(seconds, total=71.0)
    assert text == "start 4.3 s, observation 57.0 s, quantized forward 8.3 s, finish 0.9 s, other 0.5 s"
    assert parse_phase_times(text) == {"start": 4.3, "observation": 57.0, "quantized forward": 8.3,
                                       "finish": 0.9, "other": 0.5}
    assert format_phase_times({}, total=0.0) == ""
