"""A compressed-tensors model directory read as the ascendv1 tensors of the same linears.

An output of llm-compressor (or of quantjob's compressed-tensors saver) is converted one decoder
layer at a time, in memory: every quantized linear becomes a ``QuantizedLinear`` record (the
integers, scales and zero points as saved) and ``savers.ascend_tensors`` turns the record into
the tensors ``ascendv1_saver`` would have written for it (``deq_scale``, ``quant_bias``, the
negated weight offset). ``ascend_forward.saved_layer`` then computes each linear as vllm-ascend
computes an ascendv1 linear, so a compressed-tensors output is scored with the same arithmetic as
ours.

Read (compressed-tensors' own names, ``compressed_tensors.compressors``): ``int-quantized`` and
``naive-quantized`` (``weight`` int8, ``weight_scale``, ``weight_zero_point`` when asymmetric,
``input_scale`` and ``input_zero_point`` for static activations) and ``pack-quantized``
(``weight_packed`` int32, ``weight_shape``, zero points packed along the output dimension).
Schemes: static per-tensor int8 activations -> W8A8; dynamic per-token -> W8A8_DYNAMIC; no
activations -> W8A16 (8-bit weights) or W4A16 (4-bit). Anything else is refused with its name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from quantjob.formats.compressed_tensors import is_compressed_tensors
from quantjob.worker.errors import QuantJobError
from quantjob.worker.loop.records import QuantizedLinear
from quantjob.worker.model.checkpoint import Checkpoint
from quantjob.worker.model.model_config import read_model_config
from quantjob.worker.readers.ascend_forward import LayerTensors, SavedLinear
from quantjob.worker.savers.ascend_tensors import ascend_tensors

FORMATS = ("int-quantized", "naive-quantized", "pack-quantized", "mixed-precision")


def _matches(target: str, module: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target == module or target == "Linear"  # every quantized module here is a Linear


def _unpack(packed: torch.Tensor, bits: int, shape: torch.Size, packed_dim: int = 1) -> torch.Tensor:
    """int8 values of a pack-quantized int32 tensor (the library's own unpacking)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32  # type: ignore[import-untyped]

    return unpack_from_int32(packed, bits, shape, packed_dim).to(torch.int8)


class CompressedTensorsOutput:
    """A compressed-tensors directory opened for reading (headers only until a layer is asked for)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        config = read_model_config(self.directory)
        if not is_compressed_tensors(config):
            raise QuantJobError(f"{self.directory / 'config.json'} has no compressed-tensors quantization_config")
        quantization = config["quantization_config"]
        self.format = str(quantization.get("format"))
        if self.format not in FORMATS:
            raise QuantJobError(f"{self.directory / 'config.json'}: compressed-tensors format {self.format!r} is not "
                                f"read here (readable: {', '.join(FORMATS)})")
        groups = quantization.get("config_groups") or {}
        self.groups: list[dict[str, Any]] = [g for _, g in sorted(groups.items())]
        if not self.groups:
            raise QuantJobError(f"{self.directory / 'config.json'}: quantization_config has no config_groups")
        dtype_name = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16").removeprefix("torch.")
        self.dtype = getattr(torch, dtype_name)
        self.checkpoint = Checkpoint(self.directory)
        self.tensors = self.checkpoint.tensors

    def load(self, names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        return self.checkpoint.load(names, device)

    def group_for(self, module: str) -> dict[str, Any]:
        named = [g for g in self.groups if module in (g.get("targets") or [])]
        matched = named or [g for g in self.groups if any(_matches(t, module) for t in g.get("targets") or [])]
        if not matched:
            raise QuantJobError(f"{self.directory / 'config.json'}: no config group targets {module}, which has "
                                "quantized tensors")
        return matched[0]

    def layer_tensors(self, prefix: str, device: torch.device) -> LayerTensors:
        tensors = self.load(self.checkpoint.names_under(prefix), device)
        modules = sorted(name[:-len(".weight_scale")] for name in tensors if name.endswith(".weight_scale"))
        quantized: dict[str, SavedLinear] = {}
        taken: set[str] = set()
        for module in modules:
            own = {name[len(module) + 1:]: t for name, t in tensors.items()
                   if name.startswith(module + ".") and "." not in name[len(module) + 1:]}
            taken |= {f"{module}.{suffix}" for suffix in own}
            record = self.record(module, own)
            try:
                converted = {t.name[len(module) + 1:]: t.tensor for t in ascend_tensors(record)}
            except ValueError as error:
                raise QuantJobError(f"{self.directory}: {error}; vllm-ascend has no such linear") from error
            bias = converted.pop("bias", None)
            quantized[module] = SavedLinear(record.scheme, converted, bias)
        return LayerTensors(quantized, {name: t for name, t in tensors.items() if name not in taken})

    def record(self, module: str, own: dict[str, torch.Tensor]) -> QuantizedLinear:
        """One linear's saved tensors (local names) as a record."""
        group = self.group_for(module)
        weights, act = group.get("weights") or {}, group.get("input_activations")
        bits = int(weights.get("num_bits", 8))
        scale = own["weight_scale"].to(torch.float32)
        out_features = scale.shape[0]
        scale = scale.reshape(out_features, -1)
        if "weight_packed" in own:
            shape = torch.Size(int(d) for d in own["weight_shape"].tolist())
            weight_q = _unpack(own["weight_packed"], bits, shape)
        elif own.get("weight") is not None and own["weight"].dtype == torch.int8:
            weight_q = own["weight"]
        else:
            raise QuantJobError(f"{module}: the weight is not saved compressed (no int8 weight or weight_packed); "
                                "save the model with save_compressed=True")
        zero = own.get("weight_zero_point")
        if zero is not None and zero.dtype == torch.int32 and "weight_packed" in own:
            zero = _unpack(zero, bits, torch.Size(scale.shape), packed_dim=0)
        offset = zero.to(torch.float32).reshape(scale.shape) if zero is not None else torch.zeros_like(scale)
        if act is None:
            scheme = "W4A16" if bits == 4 else "W8A16"
        elif act.get("dynamic") and act.get("strategy") == "token" and act.get("num_bits") == 8:
            scheme = "W8A8_DYNAMIC"
        elif not act.get("dynamic") and act.get("strategy") == "tensor" and act.get("num_bits") == 8:
            scheme = "W8A8"
        else:
            raise QuantJobError(f"{module}: input activations {act} have no ascendv1 counterpart (static per-tensor "
                                "or dynamic per-token int8)")
        groups = scale.shape[1]
        record = QuantizedLinear(module, scheme, weight_q, scale, offset, own.get("bias"), self.dtype,  # type: ignore[arg-type]
                                 group_size=weight_q.shape[1] // groups if groups > 1 else None)
        if scheme == "W8A8":
            point = own.get("input_zero_point")
            record.input_scale = own["input_scale"].to(torch.float32).reshape(1)
            record.input_offset = (point.to(torch.float32) if point is not None else torch.zeros(1)).reshape(1)
        return record
