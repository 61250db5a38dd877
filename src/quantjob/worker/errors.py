"""The exception types for expected failures; each carries the exit code the CLI leaves with
(``quantjob.api.exit_codes``: the operator fails a QuantJob at once on a user error and restarts
the group on anything else).

The CLI prints them as a single line ``quantjob: error: <message>``; anything else that escapes
the worker is a bug and keeps its traceback (exit code 1, a crash).
"""

from __future__ import annotations

from quantjob.api.exit_codes import CRASH, INPUT


class QuantJobError(Exception):
    """A bad input the user can fix (model, calibration, output path, non-finite values). The
    message names the file or field and the fix. A retry cannot help: exit code ``INPUT``."""

    exit_code: int = INPUT


class GroupError(QuantJobError):
    """The group of ranks broke: a peer is gone or stuck, a collective timed out, or another rank
    failed. Nothing is wrong with the inputs; a restart of the group resumes: exit code ``CRASH``."""

    exit_code: int = CRASH
