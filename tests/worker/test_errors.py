"""Exit codes of the worker's failures (``quantjob.api.exit_codes``): the operator fails a QuantJob at
once on 2 or 3 and restarts the group on anything else, so another rank's failure passed on keeps
that rank's code."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from quantjob.api.exit_codes import CRASH, INPUT
from quantjob.worker.errors import GroupError, QuantJobError, exit_code_of
from quantjob.worker.savers.directory import DirectorySaver


@pytest.mark.parametrize(("error", "code"), [
    (QuantJobError("corrupt weights"), INPUT), (GroupError("rank 1 does not respond"), CRASH),
    (RuntimeError("a bug"), CRASH), (OSError("EIO"), CRASH), (QuantJobError("redo", exit_code=CRASH), CRASH),
])
def test_exit_code_of(error: BaseException, code: int) -> None:
    assert exit_code_of(error) == code


@pytest.mark.parametrize("code", [INPUT, CRASH])
def test_another_ranks_failure_keeps_its_code(code: int) -> None:
    """Before, every rank but the failing one left with INPUT, even when that rank had crashed."""
    saver = SimpleNamespace(save_path=Path("/out"))
    with pytest.raises(QuantJobError, match="rank 1 could not write the output to /out") as caught:
        DirectorySaver._agree(saver, None, [(1, "RuntimeError: boom", code)])  # type: ignore[arg-type]
    assert caught.value.exit_code == code
