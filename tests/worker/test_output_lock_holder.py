"""Issue 26.4b: a second group on one save path is refused with the QuantJob that holds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantjob.worker.errors import QuantJobError
from quantjob.worker.savers.output_lock import OutputLock


def test_the_refusal_names_the_holding_quantjob_and_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTJOB_NAME", "qwen2-w8a8")
    monkeypatch.setenv("QUANTJOB_NAMESPACE", "ml")
    monkeypatch.setenv("QUANTJOB_ATTEMPT", "1")
    old_group = OutputLock(tmp_path)
    old_group.acquire("run-a1")
    try:
        monkeypatch.setenv("QUANTJOB_ATTEMPT", "2")
        with pytest.raises(QuantJobError, match=r"in use by QuantJob ml/qwen2-w8a8 attempt 1, run 'run-a1' "
                                                 r"\(pid \d+ on .*\).*another --save_path"):
            OutputLock(tmp_path).acquire("run-a2")
    finally:
        old_group.release()
    new_group = OutputLock(tmp_path)
    new_group.acquire("run-a2")  # free once the holder is gone
    new_group.release()


def test_outside_the_operator_the_holder_is_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUANTJOB_NAME", raising=False)
    first = OutputLock(tmp_path)
    first.acquire("run-x")
    try:
        with pytest.raises(QuantJobError, match=r"in use by run 'run-x' \(pid"):
            OutputLock(tmp_path).acquire("run-y")
    finally:
        first.release()
