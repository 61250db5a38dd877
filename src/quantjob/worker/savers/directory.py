"""The saver of every format: one implementation for any world size, one output directory.

Every rank calls ``save`` for every layer; the owner (``index % world_size``) converts it with the
format (``formats.py``) and commits it to the staging area on a background thread (one layer in
flight: the next ``save``, and ``finish``, wait for it), so the loop goes on with the next layer
while it is written. ``finish`` is collective: once every layer is committed rank 0 lays out the
final files, every rank copies its share into them, and rank 0 commits them (``assemble.py``).
World size 1 is the same code path with one owner, so a saver and its distributed variant give
identical files. Rank 0 holds the directory's lock (``output_lock.py``) from ``prepare_output``
until the run ends.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from quantjob.api.exit_codes import CRASH
from quantjob.worker.errors import QuantJobError, exit_code_of
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.records import LayerOutput
from quantjob.worker.model.checkpoint import TensorInfo
from quantjob.worker.savers.assemble import (
    COMPLETE,
    SCRATCH_DIR,
    OutputPlan,
    commit_output,
    create_parts,
    layer_owner,
    marker_run_id,
    missing_files,
    model_files,
    owned_names,
    plan_output,
    remove_output,
    remove_temporaries,
    write_share,
)
from quantjob.worker.savers.formats import OutputFormat
from quantjob.worker.savers.output_lock import OutputLock
from quantjob.worker.savers.staging import (
    EXTRA_DIR,
    EXTRA_FILES,
    RUN_FILE,
    STAGING_DIR,
    TMP_PREFIX,
    atomic_write_bytes,
    json_bytes,
    link_refused,
    load_record,
    read_meta,
    real_directory,
    verify_record,
    write_record,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def volume_full(path: Path | str, err: OSError) -> QuantJobError:
    """The message for a full output volume (ENOSPC, or EDQUOT: a quota), naming ``path``."""
    return QuantJobError(f"the output volume is full: {err.strerror or err} while writing {err.filename or path}; "
                         "free space on it (or give the claim more) or choose another --save_path, then run the "
                         "same command again (committed layers are reused)")


def _not_writable(path: Path, err: OSError) -> QuantJobError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return volume_full(path, err)
    return QuantJobError(f"save path {path} is not writable ({err.strerror or err}); fix: choose a "
                         "writable --save_path or fix the permissions of the output volume")


@dataclass(frozen=True)
class Prepared:
    committed: int       # layers 0..committed-1 are staged and verified
    complete: bool       # the directory already holds this run's finished output: nothing to do


def _names_this_run_writes(model_dir: Path, fmt: OutputFormat) -> list[str]:
    """Names besides the format's own that this run writes into the directory: the model files it
    copies and the runner's extra files. Nothing in the output directory (staging included) adds
    to them, so no file planted there can make ``--overwrite`` delete a name."""
    names = [path.name for path in model_files(model_dir) if path.name != fmt.entry_file]
    return names + list(EXTRA_FILES)


def _refuse_links(save_path: Path) -> None:
    """The staging directory and what the saver keeps in it are never links: a run would write, and
    ``--overwrite`` delete, wherever they point."""
    staging = save_path / STAGING_DIR
    for directory in (staging, staging / EXTRA_DIR, staging / SCRATCH_DIR):
        if os.path.islink(directory):
            raise link_refused(directory)
        if not os.path.isdir(directory):
            continue
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_symlink():
                    raise link_refused(Path(entry.path))


def prepare_output(save_path: Path, *, model_dir: Path, run_id: str, num_layers: int, overwrite: bool,
                   fmt: OutputFormat, lock: OutputLock) -> Prepared:
    """Check, lock and claim ``save_path`` for this run.

    The same run on its own finished output is complete (nothing rewritten; a staging directory
    left beside the marker is removed). Refuses a complete output of another run (unless
    ``overwrite``), an unfinished run with another run_id (unless ``overwrite``: it is discarded),
    a path another process holds, and a path that cannot be written.
    """
    if save_path.exists() and not save_path.is_dir():
        raise QuantJobError(f"save path {save_path} is a file, not a directory; fix: choose a directory "
                            "for --save_path")
    if model_dir.resolve() == save_path.resolve():
        raise QuantJobError(f"save path {save_path} is the model directory; fix: choose another --save_path")
    try:
        save_path.mkdir(parents=True, exist_ok=True)
        lock.acquire(run_id)
    except OSError as err:
        raise _not_writable(save_path, err) from None
    try:
        return _claim(save_path, model_dir=model_dir, run_id=run_id, num_layers=num_layers, overwrite=overwrite,
                      fmt=fmt)
    except BaseException:
        lock.release()
        raise


def _claim(save_path: Path, *, model_dir: Path, run_id: str, num_layers: int, overwrite: bool,
           fmt: OutputFormat) -> Prepared:
    staging = save_path / STAGING_DIR
    _refuse_links(save_path)
    run = {"run_id": run_id, "num_layers": num_layers}
    run_file = staging / RUN_FILE
    previous: dict[str, object] | None = None
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
    ours = _names_this_run_writes(model_dir, fmt)
    complete = (save_path / COMPLETE).exists()
    if complete and marker_run_id(save_path) == run_id and not missing_files(save_path):
        # a retried pod of a finished run: success as it is; the finish's last step, if it was cut
        # short, is done here
        if staging.exists():
            try:
                shutil.rmtree(staging)
            except OSError as err:
                raise _not_writable(save_path, err) from None
        log.info("%s already holds the complete output of this run (%s); nothing to do", save_path, run_id)
        return Prepared(num_layers, True)
    if complete or (save_path / fmt.entry_file).exists():
        # Only the marker means complete. An entry file beside this run's staging is a finish that
        # was cut short between the two: it is removed and the finish runs again.
        interrupted_finish = not complete and previous == run
        if not overwrite and not interrupted_finish:
            what = ("a complete quantized model" if complete else
                    f"{fmt.entry_what} ({fmt.entry_file}) from another run")
            raise QuantJobError(f"save path {save_path} already holds {what}; fix: pass --overwrite to "
                                "replace it, or choose another --save_path")
        try:
            remove_output(save_path, fmt, ours)
        except OSError as err:
            raise _not_writable(save_path, err) from None
    if previous is not None and previous != run:
        if not overwrite:
            raise QuantJobError(
                f"{staging} holds an unfinished run with a different spec (run {previous.get('run_id')!r}, "
                f"this run {run_id!r}); fix: pass --overwrite to discard it, or choose another --save_path")
        try:
            shutil.rmtree(staging)
        except OSError as err:
            raise _not_writable(save_path, err) from None
    if previous != run:
        # Files of the names this run writes, with no staging of this run beside them: another
        # run's or the user's. They are never replaced silently, and never left beside the new
        # weights (a stray part file or index would be read as part of the model).
        foreign = owned_names(save_path, fmt, ours)
        if foreign and not overwrite:
            raise QuantJobError(f"save path {save_path} already holds {', '.join(foreign[:5])}"
                                f"{f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''}, not written by "
                                "this run, which would replace or sit beside them; fix: move them away, pass "
                                "--overwrite to replace them, or choose another --save_path")
        try:
            remove_output(save_path, fmt, ours)
        except OSError as err:
            raise _not_writable(save_path, err) from None
    try:
        real_directory(staging)
        real_directory(staging / EXTRA_DIR)
        atomic_write_bytes(run_file, json_bytes(run))
        remove_temporaries(save_path)
    except OSError as err:
        raise _not_writable(save_path, err) from None
    committed = 0
    while committed < num_layers:
        reason = verify_record(staging, committed, run_id)
        if reason is not None:
            if reason != "not committed":
                log.warning("layer %d in %s: %s; it will be quantized again", committed, staging, reason)
            break
        committed += 1
    if committed:
        log.info("%d of %d layers already committed and verified in %s", committed, num_layers, save_path)
    return Prepared(committed, False)


class DirectorySaver:
    """The OutputSaver for one output directory in one format. Build it with
    ``quantjob.worker.savers.open_saver``; ``lock`` is held on rank 0 only (None elsewhere)."""

    def __init__(self, *, save_path: Path, model_dir: Path, run_id: str, group: ProcessGroup, num_layers: int,
                 part_file_size: float | None, prepared: Prepared, fmt: OutputFormat,
                 lock: OutputLock | None) -> None:
        self.save_path = save_path
        self.staging = save_path / STAGING_DIR
        self.model_dir = model_dir
        self.run_id = run_id
        self.group = group
        self.num_layers = num_layers
        self.part_file_size = part_file_size
        self.fmt = fmt
        self.already_complete = prepared.complete
        self._committed = prepared.committed
        self._lock = lock
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        if self.already_complete:
            self._release()

    def owner(self, index: int) -> int:
        return layer_owner(index, self.group.world_size)

    def committed_layers(self) -> int:
        return self._committed

    def load_layer(self, index: int) -> LayerOutput:
        if not 0 <= index < self._committed:
            raise ValueError(f"layer {index} is not committed in {self.staging} "
                             f"(committed: 0..{self._committed - 1})")
        return load_record(self.staging, index)

    def save(self, out: LayerOutput) -> None:
        if not 0 <= out.index < self.num_layers:
            raise ValueError(f"layer index {out.index} outside 0..{self.num_layers - 1}")
        if self.owner(out.index) != self.group.rank or out.index < self._committed:
            return  # another rank's, or already committed (a saver ahead of the others it runs with)
        self._wait()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantjob-commit")
        self._pending = self._writer.submit(self._commit, out)

    def _commit(self, out: LayerOutput) -> None:
        try:
            write_record(self.staging, out, self.run_id, self.fmt)
        except OSError as err:
            self._remove_own_temporaries()
            raise _not_writable(self.save_path, err) from None
        except BaseException:
            self._remove_own_temporaries()
            raise

    def _wait(self) -> None:
        """Until the layer in flight is committed; its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def write_json(self, name: str, data: object) -> None:
        if name not in EXTRA_FILES:
            raise ValueError(f"write_json: {name!r} is not one of the output's extra files ({', '.join(EXTRA_FILES)})")
        if self.group.is_main and not self.already_complete:
            atomic_write_bytes(self.staging / EXTRA_DIR / name, json_bytes(data))

    def finish(self, source_tensors: Mapping[str, TensorInfo]) -> None:
        if self.already_complete:
            return
        self._on_every_rank(self._wait)  # every layer is committed by its owner
        self._stop_writer()
        plan = self._on_rank_0(lambda: self._plan_and_create(source_tensors))
        copied: dict[str, str] = {}
        for share in self._on_every_rank(lambda: write_share(self.save_path, plan, self.group.rank)):
            copied.update(share)
        self._on_rank_0(lambda: commit_output(self.save_path, self.staging, plan, copied, num_layers=self.num_layers,
                                              model_dir=self.model_dir, run_id=self.run_id, fmt=self.fmt))
        self._release()

    def _plan_and_create(self, source_tensors: Mapping[str, TensorInfo]) -> OutputPlan:
        """Rank 0: check every layer is committed, lay out the weight files and create them."""
        missing = [i for i in range(self.num_layers) if not self._committed_json(i)]
        if missing:
            raise QuantJobError(f"layers {missing[:5]} were never saved to {self.staging}; "
                                "fix: run the job again with the same arguments to redo them",
                                exit_code=CRASH)  # a restart redoes them
        plan = plan_output(self.staging, num_layers=self.num_layers, source_tensors=source_tensors,
                           part_file_size=self.part_file_size, world_size=self.group.world_size,
                           weights_prefix=self.fmt.weights_prefix)
        create_parts(self.save_path, plan, self.fmt.weights_prefix)
        return plan

    def _on_rank_0(self, action: Callable[[], T]) -> T:
        """Run ``action`` on rank 0; every rank gets its result, or fails when it failed."""
        result, failure, message = self._attempt(action) if self.group.is_main else (None, None, None)
        code = exit_code_of(failure) if failure is not None else 0
        message, result, code = self.group.broadcast_object((message, result, code))
        self._agree(failure, [(0, message, code)] if message else [])
        return result

    def _on_every_rank(self, action: Callable[[], T]) -> list[T]:
        """Run ``action`` on every rank; every rank gets all results in rank order, or fails when
        any rank failed."""
        outcome = self._attempt(action)
        code = exit_code_of(outcome[1]) if outcome[1] is not None else 0
        gathered = self.group.all_gather_object((outcome[2], outcome[0], code))
        self._agree(outcome[1], [(rank, text, code) for rank, (text, _, code) in enumerate(gathered) if text])
        return [result for _, result, _ in gathered]

    @staticmethod
    def _attempt(action: Callable[[], T]) -> tuple[T | None, BaseException | None, str | None]:
        try:
            return action(), None, None
        except BaseException as err:  # noqa: BLE001  # every rank must reach the collective that follows
            return None, err, f"{type(err).__name__}: {err}"

    def _agree(self, failure: BaseException | None, failed: list[tuple[int, str, int]]) -> None:
        """Raise this rank's own error, else the first other rank's (with that rank's exit code);
        nothing when all went well."""
        if failure is not None:
            raise failure
        if failed:
            rank, text, code = failed[0]
            raise QuantJobError(f"rank {rank} could not write the output to {self.save_path}: {text}", exit_code=code)

    def abort(self) -> None:
        """Drop this rank's temporary files and release the directory; committed layers stay for a
        resumed run."""
        try:
            self._wait()
        except BaseException:  # noqa: BLE001, S110  # already failing: the run's own error is reported
            pass
        self._stop_writer()
        try:
            self._remove_own_temporaries()
            if self.group.is_main and self.save_path.is_dir():
                remove_temporaries(self.save_path)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _committed_json(self, index: int) -> bool:
        try:
            return bool(read_meta(self.staging, index).get("run_id") == self.run_id)
        except (OSError, ValueError):
            return False

    def _remove_own_temporaries(self) -> None:
        """Temporary files in staging are ``.tmp-<stem>.*``; remove those of records this rank owns
        (and any not tied to a record)."""
        if not self.staging.is_dir():
            return
        for path in self.staging.glob(TMP_PREFIX + "*"):
            record = path.name.removeprefix(TMP_PREFIX).split(".")[0]
            if record.startswith("layer-") and record[len("layer-"):].isdigit():
                owner = self.owner(int(record[len("layer-"):]))
            else:
                owner = 0
            if owner == self.group.rank:
                path.unlink(missing_ok=True)
