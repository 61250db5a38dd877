"""NaN and infinity stop the run, naming the tensor and the decoder layer.

Every check looks at values that are the same on every rank (the checkpoint's tensors, the
statistics after their reduction, the parameters made from them, the reduced error sums), so
every rank stops at the same point with the same message and none waits in a collective.

A tensor is checked with two reductions (``amin``, ``amax``): both propagate NaN, and an
infinity shows in one of them, without a temporary as large as the tensor. Counting the bad
values, for the message, happens only once one is found.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from quantjob.worker.errors import QuantJobError
from quantjob.worker.loop.observers import ActivationStats
from quantjob.worker.loop.records import QuantizedLinear
from quantjob.worker.model.checkpoint import Checkpoint

_RECORD_FIELDS = ("weight_scale", "weight_offset", "input_scale", "input_offset")


def is_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of a floating ``tensor`` is finite (integer tensors always are)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    return bool(torch.isfinite(tensor.amin()) and torch.isfinite(tensor.amax()))


def _count(tensor: torch.Tensor) -> str:
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    parts = [f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else ""]
    return " and ".join(p for p in parts if p) + f" of {tensor.numel()} values"


def _layer(index: int | None) -> str:
    return f" (decoder layer {index})" if index is not None else ""


def check_weights(tensors: Mapping[str, torch.Tensor], layer: int | None, checkpoint: Checkpoint) -> None:
    """Checkpoint tensors: a non-finite weight is a damaged or diverged model."""
    for name, tensor in tensors.items():
        if not is_finite(tensor):
            info = checkpoint.tensors.get(name)
            source = info.file if info is not None else checkpoint.model_dir
            raise QuantJobError(f"{source}: tensor {name!r}{_layer(layer)} holds {_count(tensor)}; the checkpoint is "
                                "damaged or was saved from a diverged training run: re-copy the model or fix "
                                "these weights")


def check_activations(stats: Mapping[str, ActivationStats], layer: int) -> None:
    """Reduced input ranges: a non-finite activation came out of the previous layers (or the
    embedding) on some calibration sample. A linear that saw no token keeps its empty range."""
    for name, found in stats.items():
        empty = bool(torch.isposinf(found.minimum).all() and torch.isneginf(found.maximum).all())
        if empty:
            continue
        if not (bool(torch.isfinite(found.minimum).all()) and bool(torch.isfinite(found.maximum).all())):
            raise QuantJobError(f"the inputs of {name}{_layer(layer)} hold NaN or infinite values on the calibration "
                                "data (they overflow in the model's dtype, or an earlier weight is damaged); check "
                                "the model in float32, or the calibration samples")


def check_records(records: list[QuantizedLinear], layer: int) -> None:
    """Quantization parameters: finite inputs can still give an infinite scale (a range that
    overflows float32)."""
    for record in records:
        for field in _RECORD_FIELDS:
            value = getattr(record, field)
            if value is not None and not is_finite(value):
                raise QuantJobError(f"{field} of {record.name}{_layer(layer)} holds {_count(value)}: the observed "
                                    "range overflows float32; exclude this linear or check its weights")


def check_error(error: float | None, layer: int) -> None:
    """The layer's relative output error (reduced over every rank's error samples)."""
    if error is not None and not torch.isfinite(torch.tensor(error)):
        raise QuantJobError(f"the quantized outputs of decoder layer {layer} are not finite (relative error {error}); "
                            "the layer overflows in the model's dtype once quantized: exclude its linears or use a "
                            "wider dtype")
