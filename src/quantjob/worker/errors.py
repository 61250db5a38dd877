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
    message names the file or field and the fix. A retry cannot help: exit code ``INPUT``, unless
    ``exit_code`` says otherwise (another rank's failure passed on keeps that rank's code)."""

    exit_code: int = INPUT

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class GroupError(QuantJobError):
    """The group of ranks broke: a peer is gone or stuck, a collective timed out, or another rank
    failed. Nothing is wrong with the inputs; a restart of the group resumes: exit code ``CRASH``."""

    exit_code: int = CRASH


def exit_code_of(error: BaseException) -> int:
    """The exit code an error leaves with: its own for ours, ``CRASH`` for anything else."""
    return error.exit_code if isinstance(error, QuantJobError) else CRASH
