"""Savers: turn the loop's ``LayerOutput`` records into output directories.

``open_savers`` (several ``spec.save`` entries) and ``open_saver`` (one) are the entry points; the
loop sees the ``OutputSaver`` protocol and never a file format. Every saver is one implementation
(``directory.py``) with a format (``formats.py``) chosen by its catalogue entry
(``quantjob.api.catalogue``: its ``format`` names a package of ``quantjob.formats``); a distributed name
only says the job runs under ``dp_layer_wise``. With several savers each writes its own
sub-directory of the output (``quantjob.api.rules_output.saver_directories``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from quantjob.api import catalogue
from quantjob.api.modelslim import Saver
from quantjob.api.rules_output import saver_directories, saver_directory_problems
from quantjob.worker.errors import QuantJobError, exit_code_of
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.records import LayerOutput
from quantjob.worker.model.checkpoint import TensorInfo


class OutputSaver(Protocol):
    already_complete: bool
    """The output already holds this run's finished result (a retried pod): nothing to do."""

    def committed_layers(self) -> int:
        """Layers 0..K-1 already committed and verified by checksum (resume); 0 when fresh."""

    def load_layer(self, index: int) -> LayerOutput:
        """A committed layer's records, bit for bit as saved (for replay on resume)."""

    def save(self, out: LayerOutput) -> None:
        """Called by every rank for every layer; the owner rank writes it."""

    def write_json(self, name: str, data: object) -> None:
        """Rank 0 adds a JSON file to the output, committed with the rest."""

    def finish(self, source_tensors: Mapping[str, TensorInfo]) -> None:
        """Collective: write the final files and, last, the commit marker. ``source_tensors`` are
        the checkpoint's tensors outside the decoder layers (embedding, final norm, lm_head),
        copied into the output as they are."""

    def abort(self) -> None:
        """Drop temporary files; committed layers stay for a resumed run."""


def open_saver(saver_cfg: Saver, *, save_path: Path, model_dir: Path, run_id: str, group: ProcessGroup,
               overwrite: bool, num_layers: int) -> OutputSaver:
    """Collective: rank 0 checks, locks and claims ``save_path``; every rank gets the same outcome.

    The format comes from the saver's catalogue entry. A format copies the model directory's files
    (config.json among them) from ``model_dir`` as bytes when it finishes.
    """
    entry = catalogue.lookup("saver", saver_cfg.type)
    if entry is None or not entry.implemented or entry.format is None:
        raise QuantJobError(f"saver {saver_cfg.type!r} is not implemented yet; fix: use one of "
                            f"{', '.join(catalogue.supported('saver'))} in spec.save")
    from quantjob.worker.savers.directory import (
        DirectorySaver,
        Prepared,
        prepare_output,
    )
    from quantjob.worker.savers.formats import load_format
    from quantjob.worker.savers.output_lock import OutputLock

    fmt = load_format(entry.format)
    prepared: Prepared | None = None
    lock: OutputLock | None = None
    failure: BaseException | None = None
    message: str | None = None
    code = 0
    if group.is_main:
        lock = OutputLock(Path(save_path))
        try:
            prepared = prepare_output(Path(save_path), model_dir=Path(model_dir), run_id=run_id,
                                      num_layers=num_layers, overwrite=overwrite, fmt=fmt, lock=lock)
        except BaseException as err:  # noqa: BLE001  # every rank must leave the broadcast below
            failure, message, code = err, str(err), exit_code_of(err)
    prepared, message, code = group.broadcast_object((prepared, message, code))
    if failure is not None:
        raise failure
    if message is not None:
        raise QuantJobError(message, exit_code=code)  # rank 0's code: a user error or worth a restart
    assert prepared is not None
    return DirectorySaver(save_path=Path(save_path), model_dir=Path(model_dir), run_id=run_id, group=group,
                          num_layers=num_layers, part_file_size=saver_cfg.part_file_size, prepared=prepared,
                          fmt=fmt, lock=lock)


def _refuse_linked_directory(save_path: Path, directory: str) -> None:
    """A save entry's sub-directory (each component under ``save_path``) is never a link: the
    entry's files, and what ``--overwrite`` removes, stay inside the job's output."""
    from quantjob.worker.savers.staging import refuse_link

    path = save_path
    for part in Path(directory).parts if directory else ():
        path = path / part
        refuse_link(path)


def open_savers(savers: Sequence[Saver] | Saver, *, save_path: Path, model_dir: Path, run_id: str,
                group: ProcessGroup, overwrite: bool, num_layers: int) -> OutputSaver:
    """Every ``spec.save`` entry: one saver writes ``save_path`` itself; several write one
    sub-directory each (``saver_directories``) and run as one ``SaverSet``."""
    configs = [savers] if isinstance(savers, Saver) else list(savers)
    problems = [p for p in saver_directory_problems(configs, "spec.") if p.severity == "error"]
    if problems:
        raise QuantJobError("; ".join(str(problem) for problem in problems))
    opened: list[OutputSaver] = []
    try:
        for saver_cfg, directory in zip(configs, saver_directories(configs)):
            _refuse_linked_directory(Path(save_path), directory)
            opened.append(open_saver(saver_cfg, save_path=Path(save_path) / directory if directory else Path(save_path),
                                     model_dir=model_dir, run_id=run_id, group=group, overwrite=overwrite,
                                     num_layers=num_layers))
    except BaseException:
        for saver in opened:
            saver.abort()
        raise
    if len(opened) == 1:
        return opened[0]
    from quantjob.worker.savers.saver_set import SaverSet

    return SaverSet(opened)
