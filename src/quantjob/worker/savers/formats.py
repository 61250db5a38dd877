"""Output formats: the one part of a saver that knows a file format.

The output machinery (staging, the background commit, resume and its identity, the parallel
assembly with read-back verification, the part split and index, the completion marker, the lock)
serves every format. A format's writer is the ``OutputFormat`` its package returns
(``quantjob.formats.<name>``, registered in ``quantjob.formats``: writer, reader and load rules
together); the saver's catalogue entry names the format (``quantjob.api.catalogue.Algorithm.format``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from quantjob.worker.errors import QuantJobError
from quantjob.worker.loop.records import LayerOutput

FLOAT = "FLOAT"   # the tag of every tensor kept in float (copied or passed through as it is)


@dataclass(frozen=True)
class NamedTensor:
    """One tensor of the output: its full name, the format's tag for it and its value."""

    name: str
    tag: str
    tensor: torch.Tensor


@dataclass(frozen=True)
class OutputContents:
    """What a format's entry file describes, known once every layer is committed.

    ``tensors``: every output tensor in output order as (name, tag, shape); ``from_layers``: the
    names among them that came from the decoder layers (the rest were copied from the source
    checkpoint); ``linears``: the staged description of every quantized linear (name, scheme,
    dtype, group_size, has_bias, weight_symmetric, act_symmetric), in layer and module order;
    ``float_names``: every layer's float tensors in the order the loop handed them over (module
    order); ``scratch``: a private directory the format may write in.
    """

    tensors: tuple[tuple[str, str, tuple[int, ...]], ...]
    from_layers: frozenset[str]
    linears: tuple[dict[str, Any], ...]
    float_names: tuple[str, ...]
    model_dir: Path
    scratch: Path


class OutputFormat(Protocol):
    name: str
    weights_prefix: str   # weight files: <prefix>.safetensors, or <prefix>-00001-of-0000N.safetensors + index
    entry_file: str       # what a loader reads first; written after every other file, before the marker
    entry_what: str       # how messages call it ("a quantized model description")

    def layer_tensors(self, out: LayerOutput) -> list[NamedTensor]:
        """The output tensors of one decoder layer, in a fixed order (quantized linears, then the
        float tensors, every extra float tensor passed through as it is)."""

    def model_file(self, name: str, data: bytes) -> bytes | None:
        """A file copied from the model directory as the output holds it; None: not copied."""

    def entry_bytes(self, contents: OutputContents) -> bytes:
        """The entry file's bytes (a description JSON, or config.json with its quantization_config)."""


def load_format(format_name: str) -> OutputFormat:
    """The writer of the registered format ``format_name`` (``quantjob.formats``)."""
    from quantjob.formats import format_named

    try:
        fmt: OutputFormat = format_named(format_name).writer()
    except ImportError as error:
        raise QuantJobError(f"output format {format_name!r} cannot be loaded ({error}); fix: install the extra "
                            "that provides it (pip install 'quantjob[compressed-tensors]' for compressed-tensors) "
                            "or choose another saver in spec.save") from error
    return fmt
