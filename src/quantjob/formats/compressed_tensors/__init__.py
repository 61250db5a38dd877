"""The compressed-tensors format (read by vLLM and transformers): the entry and its constants.

Writer: ``writer.py`` (needs the compressed-tensors library: ``pip install 'quantjob[compressed-tensors]'``);
load rules: ``rules.py``; reader: ``quantjob.worker.readers.compressed_tensors_read.CompressedTensorsOutput``.
Facts and sources: ``docs/compressed-tensors-notes.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantjob.formats.compressed_tensors.rules import MOE_WARNING, load_problems, moe_expert_problem
from quantjob.formats.registry import OutputFormatEntry

NAME = "compressed_tensors"
QUANT_METHOD = "compressed-tensors"   # config.json quantization_config.quant_method


def is_compressed_tensors(model_config: dict[str, Any]) -> bool:
    quantization = model_config.get("quantization_config")
    return isinstance(quantization, dict) and quantization.get("quant_method") == QUANT_METHOD


def _writer() -> Any:
    from quantjob.formats.compressed_tensors.writer import FORMAT

    return FORMAT


def _recognises(_model_dir: Path, read_config: Callable[[], dict[str, Any]]) -> bool:
    return is_compressed_tensors(read_config())


def _reader(model_dir: Path) -> Any:
    from quantjob.worker.readers.compressed_tensors_read import CompressedTensorsOutput

    return CompressedTensorsOutput(model_dir)


FORMAT = OutputFormatEntry(NAME, load_problems, _writer, _recognises, _reader, kind="compressed-tensors",
                           reads_what="compressed-tensors outputs", exact_fused=True,
                           moe_expert_problem=moe_expert_problem, moe_warning=MOE_WARNING)
