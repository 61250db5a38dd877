"""Savers: turn the loop's ``LayerOutput`` records into an output directory.

``open_saver`` is the only entry point; the loop sees the ``OutputSaver`` protocol and never a
file format. ``ascendv1_saver`` and ``distributed_ascendv1_saver`` are one implementation
(``ascend.py``): the distributed name only says the job runs under ``dp_layer_wise``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from quantjob.api.modelslim import Saver
from quantjob.worker.checkpoint import TensorInfo
from quantjob.worker.distributed import Group
from quantjob.worker.errors import QuantJobError
from quantjob.worker.records import LayerOutput

ASCEND_SAVERS = ("ascendv1_saver", "distributed_ascendv1_saver")


class OutputSaver(Protocol):
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


def open_saver(saver_cfg: Saver, *, save_path: Path, model_dir: Path, model_config: dict,
               run_id: str, group: Group, overwrite: bool, num_layers: int) -> OutputSaver:
    """Collective: rank 0 checks and claims ``save_path``, every rank gets the same outcome.

    ``model_config`` (the source config.json) is accepted for savers that need it; the ascendv1
    layout copies config.json from ``model_dir`` instead.
    """
    if saver_cfg.type not in ASCEND_SAVERS:
        raise QuantJobError(f"saver {saver_cfg.type!r} is not implemented yet; fix: use "
                            f"{' or '.join(ASCEND_SAVERS)} in spec.save")
    from quantjob.worker.savers.ascend import AscendV1Saver, prepare_output

    committed: int | None = None
    failure: BaseException | None = None
    message: str | None = None
    if group.is_main:
        try:
            committed = prepare_output(Path(save_path), model_dir=Path(model_dir), run_id=run_id,
                                       num_layers=num_layers, overwrite=overwrite)
        except BaseException as err:  # noqa: BLE001  # every rank must leave the broadcast below
            failure, message = err, str(err)
    committed, message = group.broadcast_object((committed, message))
    if failure is not None:
        raise failure
    if message is not None:
        raise QuantJobError(message)
    assert committed is not None
    return AscendV1Saver(save_path=Path(save_path), model_dir=Path(model_dir), run_id=run_id, group=group,
                         num_layers=num_layers, part_file_size=saver_cfg.part_file_size, committed=committed)
