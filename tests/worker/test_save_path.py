"""The worker refuses an output among the model's files, or holding them, on resolved paths and by
file identity (issue 14, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantjob.worker.errors import QuantJobError
from quantjob.worker.savers.save_path import check_save_path, is_within


@pytest.fixture
def model(tmp_path: Path) -> Path:
    directory = tmp_path / "volume" / "Qwen2-7B"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    return directory


@pytest.mark.parametrize("relative", ["Qwen2-7B", "./Qwen2-7B/", "Qwen2-7B/w8a8", "Qwen2-7B/a/b",
                                      "other/../Qwen2-7B/out"])
def test_outputs_in_the_model_directory_are_refused(model: Path, relative: str) -> None:
    with pytest.raises(QuantJobError, match="model directory"):
        check_save_path(model.parent / relative, model)


def test_an_output_above_the_model_is_refused(model: Path) -> None:
    with pytest.raises(QuantJobError, match="contains the model directory"):
        check_save_path(model.parent, model)


def test_another_mount_of_the_same_directory_is_seen(model: Path, tmp_path: Path) -> None:
    """Two mounts of one claim look like two paths; a link stands in for the second mount here."""
    mount = tmp_path / "mnt-output"
    mount.symlink_to(model.parent, target_is_directory=True)
    with pytest.raises(QuantJobError, match="is the model directory"):
        check_save_path(mount / "Qwen2-7B", model)
    with pytest.raises(QuantJobError, match="inside the model directory"):
        check_save_path(mount / "Qwen2-7B" / "out", model)
    assert is_within(mount / "Qwen2-7B" / "new" / "deeper", model)


@pytest.mark.parametrize("relative", ["Qwen2-7B-w8a8", "quantized/Qwen2-7B", "Qwen2-7B-w8a8/out"])
def test_outputs_beside_the_model_are_accepted(model: Path, relative: str) -> None:
    check_save_path(model.parent / relative, model)
    assert not (model.parent / relative).exists()  # checking writes nothing
