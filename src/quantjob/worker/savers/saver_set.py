"""Several savers run as one: every layer goes to each, each writes its own directory.

Each saver resumes on its own (its own staging, lock and marker); the set resumes at the smallest
committed prefix, replays those layers from a saver that has them, and a saver that is ahead
skips the layers it already holds. A saver whose directory already holds this run's finished
output does nothing; the set is complete when every saver is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from quantjob.worker.loop.records import LayerOutput
from quantjob.worker.model.checkpoint import TensorInfo

if TYPE_CHECKING:
    from quantjob.worker.savers import OutputSaver


class SaverSet:
    def __init__(self, savers: Sequence[OutputSaver]) -> None:
        self.savers = list(savers)
        self.already_complete = all(saver.already_complete for saver in self.savers)

    def committed_layers(self) -> int:
        return min(saver.committed_layers() for saver in self.savers)

    def load_layer(self, index: int) -> LayerOutput:
        """From a saver that still has its staging (a complete one has none)."""
        for saver in self.savers:
            if not saver.already_complete and index < saver.committed_layers():
                return saver.load_layer(index)
        raise ValueError(f"layer {index} is committed in none of the savers")

    def save(self, out: LayerOutput) -> None:
        for saver in self.savers:
            if not saver.already_complete:
                saver.save(out)

    def write_json(self, name: str, data: object) -> None:
        for saver in self.savers:
            saver.write_json(name, data)

    def finish(self, source_tensors: Mapping[str, TensorInfo]) -> None:
        for saver in self.savers:
            saver.finish(source_tensors)

    def abort(self) -> None:
        failure: BaseException | None = None
        for saver in self.savers:
            try:
                saver.abort()
            except BaseException as error:  # noqa: BLE001  # abort every saver; report the first failure
                failure = failure or error
        if failure is not None:
            raise failure
