"""The compressed-tensors format (read by vLLM and by transformers with compressed-tensors installed):
``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` + index) and ``config.json`` with its
``quantization_config``. The library itself does the format: its config models
(``QuantizationScheme``/``QuantizationArgs``/``QuantizationConfig``), its choice of compression per
scheme (``infer_module_format``: int-quantized for W8A8, pack-quantized for weight-only), its
compressors (tensor names, int32 packing, dropped symmetric zero points) and its ``update_config``
(the config.json it writes). Facts and sources: ``docs/compressed-tensors-notes.md``.

A record holds the integers already: the compressor is handed ``weight_q - zero_point`` with a unit
scale, which it quantizes back to ``weight_q`` exactly (small integers in float32), and the real
scale is put in its place afterwards. Scales are stored in the model dtype, as the library's
``initialize_qparams`` creates them; zero points as the library's int8 (packed to int32 for
pack-quantized asymmetric weights).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from compressed_tensors.compressors import BaseCompressor, ModelCompressor  # type: ignore[import-untyped]
from compressed_tensors.compressors.format import infer_module_format  # type: ignore[import-untyped]
from compressed_tensors.config import CompressionFormat  # type: ignore[import-untyped]
from compressed_tensors.quantization import (  # type: ignore[import-untyped]
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    QuantizationStatus,
)

from quantjob.api.model_types import LM_HEAD  # a Linear that stays float in every supported family (tied or not)
from quantjob.formats.ascendv1 import DESCRIPTION as _ASCEND_DESCRIPTION
from quantjob.formats.compressed_tensors import NAME
from quantjob.worker.loop.records import LayerOutput, QuantizedLinear
from quantjob.worker.savers.formats import FLOAT, NamedTensor, OutputContents

WEIGHTS_PREFIX = "model"          # transformers' SAFE_WEIGHTS_NAME, less ".safetensors"
CONFIG = "config.json"


def scheme_for(scheme: str, group_size: int | None, weight_symmetric: bool,
               act_symmetric: bool | None) -> QuantizationScheme:
    """The library's scheme for one of quantjob's (targets are set by the caller)."""
    weights = QuantizationArgs(num_bits=4 if scheme == "W4A16" else 8, type="int",
                               strategy="group" if group_size else "channel", group_size=group_size,
                               symmetric=weight_symmetric, dynamic=False)
    inputs = None
    if scheme == "W8A8":
        inputs = QuantizationArgs(num_bits=8, type="int", strategy="tensor", symmetric=bool(act_symmetric),
                                  dynamic=False)
    elif scheme == "W8A8_DYNAMIC":
        inputs = QuantizationArgs(num_bits=8, type="int", strategy="token", symmetric=True, dynamic=True)
    result = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=inputs)
    result.format = infer_module_format(torch.nn.Linear, result)
    return result


def linear_tensors(q: QuantizedLinear) -> dict[str, torch.Tensor]:
    """One quantized linear's tensors under its module name, as the library's compressor lays them out."""
    scheme = scheme_for(q.scheme, q.group_size, q.symmetric_weights(), q.symmetric_activations())
    assert scheme.weights is not None and scheme.format is not None
    columns = q.weight_q.shape[1] // q.weight_scale.shape[1]
    offset = q.weight_offset.to(torch.float32)
    state: dict[str, torch.Tensor] = {
        "weight": q.weight_q.to(torch.float32) - offset.repeat_interleave(columns, dim=1),
        "weight_scale": torch.ones_like(q.weight_scale, dtype=torch.float32),
    }
    if not scheme.weights.symmetric:
        state["weight_zero_point"] = offset.round().to(torch.int8)
    if q.scheme == "W8A8":
        assert q.input_scale is not None and q.input_offset is not None
        state["input_scale"] = q.input_scale.reshape(1).to(q.dtype)
        state["input_zero_point"] = q.input_offset.reshape(1).round().to(torch.int8)
    compressor: Any = BaseCompressor.get_value_from_registry(CompressionFormat(scheme.format).value)
    compressed: dict[str, torch.Tensor] = dict(compressor.compress(state, scheme))
    compressed["weight_scale"] = q.weight_scale.to(q.dtype).contiguous()
    if q.bias is not None:
        compressed["bias"] = q.bias
    return {f"{q.name}.{key}": value.contiguous() for key, value in sorted(compressed.items())}


def quantization_config(linears: Sequence[dict[str, Any]], ignore: list[str]) -> QuantizationConfig:
    """One config group per distinct scheme, in order of first use (as the library's
    ``QuantizationConfig.from_pretrained`` names them): a single group targets ``Linear``, several
    list their modules by name; ``ignore`` holds every Linear kept in float."""
    groups: dict[str, tuple[QuantizationScheme, list[str]]] = {}
    for lin in linears:
        scheme = scheme_for(lin["scheme"], lin["group_size"], lin["weight_symmetric"], lin.get("act_symmetric"))
        key = scheme.model_dump_json()
        groups.setdefault(key, (scheme, []))[1].append(lin["name"])
    config_groups: dict[str, QuantizationScheme | list[str]] = {}
    for index, (scheme, names) in enumerate(groups.values()):
        if len(groups) > 1:
            scheme = scheme.model_copy(update={"targets": names})
        config_groups[f"group_{index}"] = scheme
    formats = {scheme.format for scheme, _ in groups.values()}
    overall = formats.pop() if len(formats) == 1 else CompressionFormat.mixed_precision
    return QuantizationConfig(config_groups=config_groups, format=CompressionFormat(overall).value,
                              quantization_status=QuantizationStatus.COMPRESSED, ignore=ignore)


class CompressedTensorsFormat:
    name = NAME
    weights_prefix = WEIGHTS_PREFIX
    entry_file = CONFIG
    entry_what = "a model config"

    def layer_tensors(self, out: LayerOutput) -> list[NamedTensor]:
        tensors = [NamedTensor(name, q.scheme, tensor) for q in out.quantized
                   for name, tensor in linear_tensors(q).items()]
        tensors += [NamedTensor(name, FLOAT, tensor) for name, tensor in out.float_tensors.items()]
        return tensors

    def model_file(self, name: str, data: bytes) -> bytes | None:
        return None if name in (CONFIG, _ASCEND_DESCRIPTION) else data

    def entry_bytes(self, contents: OutputContents) -> bytes:
        shapes = {name: shape for name, _, shape in contents.tensors}
        ignore = [name.removesuffix(".weight") for name in contents.float_names
                  if name.endswith(".weight") and len(shapes.get(name, ())) == 2]
        qconfig = quantization_config(contents.linears, [*ignore, LM_HEAD])
        config = json.loads((contents.model_dir / CONFIG).read_bytes())
        config.pop("quantization_config", None)
        if isinstance(config.get("text_config"), dict):
            config["text_config"].pop("quantization_config", None)
        path = contents.scratch / CONFIG
        path.write_text(json.dumps(config), encoding="utf-8")
        ModelCompressor(quantization_config=qconfig).update_config(str(contents.scratch))
        return path.read_bytes()


FORMAT = CompressedTensorsFormat()
