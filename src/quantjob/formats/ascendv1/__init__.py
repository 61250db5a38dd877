"""The ascendv1 format (msModelSlim's v1 saver, read by vllm-ascend): the entry and its constants.

Writer: ``writer.py``; load rules: ``rules.py``; reader: ``quantjob.worker.readers.ascend_forward.AscendOutput``
(vllm-ascend's arithmetic on the saved tensors). Facts and sources: ``docs/ascend-format-notes.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantjob.formats.ascendv1.rules import load_problems, moe_expert_problem
from quantjob.formats.registry import OutputFormatEntry

NAME = "ascendv1"
DESCRIPTION = "quant_model_description.json"  # what vllm-ascend's AscendModelSlimConfig reads


def _writer() -> Any:
    from quantjob.formats.ascendv1.writer import FORMAT

    return FORMAT


def _recognises(model_dir: Path, _read_config: Callable[[], dict[str, Any]]) -> bool:
    return (model_dir / DESCRIPTION).is_file()


def _reader(model_dir: Path) -> Any:
    from quantjob.worker.readers.ascend_forward import AscendOutput

    return AscendOutput(model_dir)


FORMAT = OutputFormatEntry(NAME, load_problems, _writer, _recognises, _reader, kind="ascendv1",
                           reads_what=f"ascendv1 outputs ({DESCRIPTION})",
                           moe_expert_problem=moe_expert_problem)
