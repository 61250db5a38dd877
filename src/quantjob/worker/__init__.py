"""The quantization worker: runners, adapters, calibration, processors, observers, savers, launcher.

``main(args) -> int`` is its entry point (``quantjob.worker.entry``); ``quantjob quantize`` parses
the command line and calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantjob.worker.entry import WorkerArgs


def main(args: WorkerArgs) -> int:
    """Run one quantization (or one rank of it) as ``args`` say; the process's exit code."""
    from quantjob.worker.entry import main as run

    return run(args)
