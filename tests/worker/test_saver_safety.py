"""Regression tests for the output directory's safety (issue 14, items 2, 12 and 13).

- 2: ``--overwrite`` removes only names the saver itself writes, inside the output directory; the
  completion marker is input, so ``../`` or absolute names listed in it are never followed;
- 12: two runs on one output directory: the second is refused at once, naming the run that holds
  the directory; the lock goes with the process that held it (SIGKILL included);
- 13: a retried pod of a finished run (same run id) succeeds without rewriting anything, and a
  staging directory left beside the marker is removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_saver_output import layer_output, open_ascend, outer_source, run_all, tree

from quantjob.worker.errors import QuantJobError
from quantjob.worker.savers.assemble import COMPLETE
from quantjob.worker.savers.format_ascendv1 import DESCRIPTION
from quantjob.worker.savers.staging import STAGING_DIR


@pytest.fixture(scope="module")
def model_dir(tiny_model: Callable[..., Path]) -> Path:
    return tiny_model("qwen2", 2)


# --- item 2: the marker is untrusted ------------------------------------------------------------------------

def test_overwrite_never_follows_names_listed_in_the_marker_out_of_the_directory(tmp_path: Path,
                                                                               model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir)
    outside = tmp_path / "victim.txt"              # beside the output directory
    outside.write_text("keep me")
    absolute = tmp_path / "elsewhere" / "data.bin"  # anywhere on the file system
    absolute.parent.mkdir()
    absolute.write_text("keep me too")
    user_file = save / "notes.txt"                  # the user's own file inside the output directory
    user_file.write_text("mine")
    nested = save / "sub"
    nested.mkdir()
    (nested / "x.json").write_text("{}")
    marker = json.loads((save / COMPLETE).read_text())
    for name in ("../victim.txt", str(absolute), "notes.txt", "sub/x.json", "sub/../notes.txt", ".", ".."):
        marker["files"][name] = "0" * 64
    (save / COMPLETE).write_text(json.dumps(marker))

    run_all(save, model_dir, overwrite=True, run_id="run-b")

    assert outside.read_text() == "keep me"
    assert absolute.read_text() == "keep me too"
    assert user_file.read_text() == "mine"
    assert (nested / "x.json").read_text() == "{}"
    assert json.loads((save / COMPLETE).read_text())["run_id"] == "run-b"


def test_overwrite_leaves_look_alike_weight_files_of_the_user(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir)
    backup = save / "quant_model_weights.safetensors.bak"
    backup.write_bytes(b"user backup")
    run_all(save, model_dir, overwrite=True, run_id="run-b")
    assert backup.read_bytes() == b"user backup"


def test_overwrite_removes_a_link_never_its_target(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir)
    target = tmp_path / "precious.json"
    target.write_text("keep")
    (save / "quant_errors.json").unlink()
    (save / "quant_errors.json").symlink_to(target)               # a name the saver writes, as a link
    run_all(save, model_dir, overwrite=True, run_id="run-b")
    assert target.read_text() == "keep"
    assert not (save / "quant_errors.json").is_symlink()


# --- item 12: one run at a time on one output directory -----------------------------------------------------

def test_a_second_run_on_the_same_save_path_is_refused_naming_the_holder(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    first = open_ascend(save, model_dir, layers=2, run_id="run-holder")
    first.save(layer_output(0))
    with pytest.raises(QuantJobError, match=r"in use by run 'run-holder' \(pid \d+ on .*\).*wait for it"):
        open_ascend(save, model_dir, layers=2, run_id="run-other")
    with pytest.raises(QuantJobError, match=r"in use by run 'run-holder'"):  # the same run twice at once, too
        open_ascend(save, model_dir, layers=2, run_id="run-holder")
    first.save(layer_output(1))
    first.write_json("quant_errors.json", {})
    first.finish(outer_source(tmp_path))
    assert not (save / ".quantjob-lock").exists()                  # released and removed at the end of the run
    again = open_ascend(save, model_dir, layers=2, run_id="run-holder")
    assert again.already_complete


def test_an_aborted_run_releases_the_directory(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    first = open_ascend(save, model_dir, layers=2)
    first.save(layer_output(0))
    first.abort()
    assert open_ascend(save, model_dir, layers=2).committed_layers() == 1


_HOLDER = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_saver_output import open_ascend
saver = open_ascend(Path({save!r}), Path({model!r}), layers=2, run_id="run-killed")
print("locked", flush=True)
time.sleep(300)
"""


@pytest.mark.timeout(120)
def test_the_lock_goes_with_a_killed_process(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    code = _HOLDER.format(tests=str(Path(__file__).parent), save=str(save), model=str(model_dir))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(QuantJobError, match=rf"in use by run 'run-killed' \(pid {proc.pid} "):
            open_ascend(save, model_dir, layers=2, run_id="run-killed")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock with the process
        try:
            saver = open_ascend(save, model_dir, layers=2, run_id="run-killed")
            break
        except QuantJobError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert saver.committed_layers() == 0


# --- item 13: a finished output is idempotent ---------------------------------------------------------------

def test_the_same_run_on_a_complete_output_succeeds_without_rewriting(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir)
    before = tree(save)
    stamps = {p.name: p.stat().st_mtime_ns for p in save.iterdir()}
    again = open_ascend(save, model_dir, layers=3)              # a retried pod of the Succeeded job
    assert again.already_complete
    assert tree(save) == before
    assert {p.name: p.stat().st_mtime_ns for p in save.iterdir()} == stamps
    # another run is still refused
    with pytest.raises(QuantJobError, match="already holds a complete quantized model"):
        open_ascend(save, model_dir, layers=3, run_id="run-b")


def test_a_staging_directory_left_beside_the_marker_is_removed(tmp_path: Path, model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.worker.savers import assemble

    save = tmp_path / "out"

    def lost(path: object, *args: object, **kwargs: object) -> None:
        raise OSError("node lost after the marker")

    monkeypatch.setattr(assemble.shutil, "rmtree", lost)
    with pytest.raises(OSError, match="node lost after the marker"):
        run_all(save, model_dir)
    monkeypatch.undo()
    assert (save / COMPLETE).exists() and (save / STAGING_DIR).exists()
    marker = (save / COMPLETE).read_bytes()
    again = open_ascend(save, model_dir, layers=3)
    assert again.already_complete
    assert not (save / STAGING_DIR).exists()
    assert (save / COMPLETE).read_bytes() == marker and (save / DESCRIPTION).exists()
