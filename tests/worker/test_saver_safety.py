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

from quantjob.formats.ascendv1 import DESCRIPTION
from quantjob.worker.errors import QuantJobError
from quantjob.worker.savers.assemble import COMPLETE
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


# --- issue 27: files of our names that this run did not write -----------------------------------------------

@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "quant_errors.json",
                                  "quant_model_weights-00001-of-00002.safetensors",
                                  "quant_model_weights.safetensors.index.json"])
def test_a_foreign_file_of_a_name_the_run_writes_is_refused_without_overwrite(tmp_path: Path, model_dir: Path,
                                                                              name: str) -> None:
    assert name not in ("config.json", "tokenizer.json") or (model_dir / name).is_file()
    save = tmp_path / "out"
    save.mkdir()
    (save / name).write_bytes(b"theirs")
    with pytest.raises(QuantJobError, match=rf"already holds {name}, not written by this run.*--overwrite"):
        open_ascend(save, model_dir, layers=3)
    assert (save / name).read_bytes() == b"theirs"
    assert not (save / STAGING_DIR).exists() and not (save / ".quantjob-lock").exists()


def test_overwrite_replaces_foreign_files_and_leaves_no_foreign_weights_beside_the_new(tmp_path: Path,
                                                                                      model_dir: Path) -> None:
    save = tmp_path / "out"
    save.mkdir()
    for name in ("config.json", "quant_model_weights-00001-of-00002.safetensors",
                 "quant_model_weights.safetensors.index.json"):
        (save / name).write_bytes(b"theirs")
    run_all(save, model_dir, overwrite=True)
    assert (save / "config.json").read_bytes() == (model_dir / "config.json").read_bytes()
    assert sorted(p.name for p in save.glob("quant_model_weights*")) == ["quant_model_weights.safetensors"]
    assert set(json.loads((save / COMPLETE).read_text())["files"]) >= {"config.json", "quant_model_weights.safetensors"}


def test_weight_files_put_beside_a_running_job_fail_its_finish(tmp_path: Path, model_dir: Path) -> None:
    """The claim removed or refused them; a part file that appears while the run goes on is named at
    the finish, before any weight file is written, instead of ending up in a complete output."""
    save = tmp_path / "out"
    saver = open_ascend(save, model_dir, layers=1)
    saver.save(layer_output(0))
    stray = save / "quant_model_weights-00002-of-00002.safetensors"
    stray.write_bytes(b"theirs")
    with pytest.raises(QuantJobError, match=rf"holds {stray.name}, which this run does not write"):
        saver.finish(outer_source(tmp_path))
    saver.abort()
    assert stray.read_bytes() == b"theirs"
    assert not (save / COMPLETE).exists() and not (save / "quant_model_weights.safetensors").exists()


def test_a_planted_staged_extra_file_is_neither_deleted_nor_copied(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir)
    victim = save / "notes.txt"                          # the user's file in the output directory
    victim.write_text("mine")
    planted = save / STAGING_DIR / "extra" / "notes.txt"  # staging of another run, left with a planted name
    planted.parent.mkdir(parents=True)
    planted.write_text("planted")
    (save / STAGING_DIR / "run.json").write_text(json.dumps({"run_id": "run-x", "num_layers": 3}))
    run_all(save, model_dir, overwrite=True, run_id="run-b")
    assert victim.read_text() == "mine"
    assert "notes.txt" not in json.loads((save / COMPLETE).read_text())["files"]


def test_write_json_takes_only_the_runners_extra_files(tmp_path: Path, model_dir: Path) -> None:
    from quantjob.worker.loop.runner import ERRORS_FILE
    from quantjob.worker.savers.provenance import PROVENANCE_FILE
    from quantjob.worker.savers.staging import EXTRA_FILES

    assert set(EXTRA_FILES) == {ERRORS_FILE, PROVENANCE_FILE}
    saver = open_ascend(tmp_path / "out", model_dir, layers=1)
    with pytest.raises(ValueError, match="not one of the output's extra files"):
        saver.write_json("notes.json", {})
    saver.abort()


# --- issue 26.12: links planted in the output directory are never written through ---------------------------

def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    return victim


def test_a_linked_lock_file_is_refused_and_its_target_kept(tmp_path: Path, model_dir: Path) -> None:
    save, victim = tmp_path / "out", _victim(tmp_path)
    save.mkdir()
    (save / ".quantjob-lock").symlink_to(victim)
    with pytest.raises(QuantJobError, match=r"\.quantjob-lock is a symbolic link.*remove the link"):
        open_ascend(save, model_dir, layers=1)
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("name", [".tmp-run.json", "run.json", ".tmp-layer-00000.safetensors", "extra"])
def test_a_link_in_staging_is_refused_and_its_target_kept(tmp_path: Path, model_dir: Path, name: str) -> None:
    save, victim = tmp_path / "out", _victim(tmp_path)
    (save / STAGING_DIR).mkdir(parents=True)
    (save / STAGING_DIR / name).symlink_to(victim if name != "extra" else tmp_path)
    with pytest.raises(QuantJobError, match=rf"{STAGING_DIR}/{name} is a symbolic link"):
        run_all(save, model_dir, layers=1)
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "victim.txt"]


def test_a_linked_staging_directory_is_refused_and_left_alone(tmp_path: Path, model_dir: Path) -> None:
    save, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "run.json").write_text("theirs")
    save.mkdir()
    (save / STAGING_DIR).symlink_to(elsewhere, target_is_directory=True)
    for overwrite in (False, True):
        with pytest.raises(QuantJobError, match=rf"{STAGING_DIR} is a symbolic link"):
            run_all(save, model_dir, layers=1, overwrite=overwrite)
    assert [p.name for p in elsewhere.iterdir()] == ["run.json"] and (elsewhere / "run.json").read_text() == "theirs"


def test_the_lock_is_opened_without_following_a_link(tmp_path: Path) -> None:
    """Even a link made between the claim's checks and the open is not written through."""
    from quantjob.worker.savers.output_lock import OutputLock

    victim = _victim(tmp_path)
    (tmp_path / ".quantjob-lock").symlink_to(victim)
    with pytest.raises(QuantJobError, match="symbolic link"):
        OutputLock(tmp_path).acquire("run-a")
    assert victim.read_text() == "keep me"


def test_atomic_writes_never_follow_a_link_at_the_temporary_name(tmp_path: Path) -> None:
    from quantjob.worker.savers.staging import atomic_write_bytes

    victim = _victim(tmp_path)
    (tmp_path / ".tmp-x.json").symlink_to(victim)
    with pytest.raises(QuantJobError, match=r"\.tmp-x\.json is a symbolic link"):
        atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert victim.read_text() == "keep me" and not (tmp_path / "x.json").exists()


# --- issue 27: a full volume while claiming -----------------------------------------------------------------

def test_a_full_volume_while_claiming_is_named_as_full(tmp_path: Path, model_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from quantjob.worker.savers import directory

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(directory, "atomic_write_bytes", full)
    save = tmp_path / "out"
    with pytest.raises(QuantJobError) as caught:
        open_ascend(save, model_dir, layers=1)
    message = str(caught.value)
    assert "output volume is full" in message and "No space left on device" in message
    assert str(save / STAGING_DIR / "run.json") in message and "--save_path" in message
    assert "permissions" not in message
    monkeypatch.setattr(directory, "atomic_write_bytes",
                        lambda path, data: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Disk quota exceeded")))
    with pytest.raises(QuantJobError, match=rf"output volume is full: Disk quota exceeded while writing {save}"):
        open_ascend(save, model_dir, layers=1)
