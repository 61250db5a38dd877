"""The one exception type for expected bad input (missing files, corrupt weights, empty data).

The CLI prints it as a single line ``quantjob: error: <message>`` and exits 1; anything else that
escapes the worker is a bug and keeps its traceback.
"""

from __future__ import annotations


class QuantJobError(Exception):
    """A bad input the user can fix. The message names the file or field and the fix."""
