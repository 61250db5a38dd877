"""Per-layer and end-to-end output errors of a quantized model, recomputed from its saved files.

The definition is the one of ``quant_errors.json`` (``quantjob.worker.loop.runner``): for a layer fed
some inputs, ``sqrt(sum |y_q - y|^2 / sum |y|^2)`` over the samples, ``y`` the float layer's
outputs and ``y_q`` those of the layer rebuilt from the saved tensors with quantjob's fake
quantization (``decoder.quantized_layer``). With ``chained=False`` every layer gets the float
model's inputs (the figure in ``quant_errors.json``); with ``chained=True`` the quantized layers
run one after the other from the embeddings, and the last layer's figure is the end-to-end error
of the final hidden states.

Saved layouts read here: quantjob's ascendv1 output (``ascend_layer``) and llm-compressor's
compressed-tensors ``int-quantized`` output (``compressed_tensors_layer``). Both give the layer
as a ``LayerOutput`` of records, so both are run by the very same code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch
from safetensors import safe_open

from quantjob.worker.loop.records import LayerOutput, QuantizedLinear
from quantjob.worker.model.adapters import adapter_for
from quantjob.worker.model.checkpoint import Checkpoint
from quantjob.worker.model.decoder import (
    Skeleton,
    build_skeleton,
    layer_forward,
    materialise,
    quantized_layer,
    release,
)
from quantjob.worker.model.model_config import read_model_config
from quantjob.worker.readers.ascend_forward import AscendOutput, saved_layer

CPU = torch.device("cpu")
LayerSource = Callable[[int, str], LayerOutput]  # (layer index, its prefix) -> the saved layer


class SavedTensors:
    """Every tensor of a saved model directory by name (safetensors files, read on demand)."""

    def __init__(self, directory: Path) -> None:
        self.files: dict[str, Path] = {}
        for file in sorted(directory.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open handles have no __iter__)
                    self.files[name] = file

    def under(self, prefix: str) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for name, file in self.files.items():
            if name.startswith(prefix):
                by_file.setdefault(file, []).append(name)
        for file, names in by_file.items():
            with safe_open(str(file), framework="pt") as handle:
                out.update({name: handle.get_tensor(name) for name in names})
        return out


def ascend_layer(directory: Path) -> LayerSource:
    """Layers of quantjob's ascendv1 output as records (the inverse of ``savers.ascend_tensors``)."""
    saved = SavedTensors(directory)
    description = json.loads((directory / "quant_model_description.json").read_text(encoding="utf-8"))

    def layer(_index: int, prefix: str) -> LayerOutput:
        tensors = saved.under(prefix)
        quantized, floats = [], {}
        linears = {name[:-len(".weight_scale")] for name in tensors if name.endswith(".weight_scale")}
        for name, tensor in tensors.items():
            module = name.rsplit(".", 1)[0]
            if module not in linears:
                floats[name] = tensor
        for module in sorted(linears):
            scheme = description[f"{module}.weight"]
            dtype = tensors[f"{module}.weight_scale"].dtype
            record = QuantizedLinear(
                name=module, scheme=scheme, weight_q=tensors[f"{module}.weight"],
                weight_scale=tensors[f"{module}.weight_scale"].float(),
                weight_offset=torch.zeros_like(tensors[f"{module}.weight_offset"].float())
                - tensors[f"{module}.weight_offset"].float(),
                bias=tensors.get(f"{module}.bias"), dtype=dtype)
            if scheme == "W8A8":
                record.input_scale = tensors[f"{module}.input_scale"].float()
                record.input_offset = tensors[f"{module}.input_offset"].float()
            groups = record.weight_scale.shape[1]
            record.group_size = record.weight_q.shape[1] // groups if groups > 1 else None
            quantized.append(record)
        return LayerOutput(0, quantized, floats)

    return layer


def compressed_tensors_layer(directory: Path) -> LayerSource:
    """Layers of an llm-compressor ``int-quantized`` output as W8A8 (static) or W8A8_DYNAMIC records."""
    saved = SavedTensors(directory)

    def layer(_index: int, prefix: str) -> LayerOutput:
        tensors = saved.under(prefix)
        quantized, floats = [], {}
        linears = {name[:-len(".weight_scale")] for name in tensors if name.endswith(".weight_scale")}
        for name, tensor in tensors.items():
            if name.rsplit(".", 1)[0] not in linears:
                floats[name] = tensor
        for module in sorted(linears):
            weight, scale = tensors[f"{module}.weight"], tensors[f"{module}.weight_scale"]
            if weight.dtype != torch.int8:  # a float (fake-quantized) save: back to integers
                weight = torch.round(weight.float() / scale.float()).clamp(-128, 127).to(torch.int8)
            zero = tensors.get(f"{module}.weight_zero_point")
            static = f"{module}.input_scale" in tensors
            record = QuantizedLinear(
                name=module, scheme="W8A8" if static else "W8A8_DYNAMIC", weight_q=weight,
                weight_scale=scale.float().reshape(-1, 1),
                weight_offset=(zero.float() if zero is not None else torch.zeros_like(scale.float())).reshape(-1, 1),
                bias=tensors.get(f"{module}.bias"), dtype=scale.dtype)
            if static:
                record.input_scale = tensors[f"{module}.input_scale"].float().reshape(1)
                point = tensors.get(f"{module}.input_zero_point")
                record.input_offset = (point.float() if point is not None else torch.zeros(1)).reshape(1)
            quantized.append(record)
        return LayerOutput(0, quantized, floats)

    return layer


def _relative(reference: dict[int, torch.Tensor], quantized: dict[int, torch.Tensor]) -> float:
    num = sum(float((quantized[g].double() - reference[g].double()).pow(2).sum()) for g in reference)
    den = sum(float(reference[g].double().pow(2).sum()) for g in reference)
    return (num / den) ** 0.5 if den > 0 else 0.0


SavedRunner = Callable[[Skeleton, int, torch.nn.Module, str], AbstractContextManager[torch.nn.Module]]


def _fake_quantized(saved: LayerSource) -> SavedRunner:
    """Layers rebuilt from records by quantjob's fake quantization (``decoder.quantized_layer``)."""
    return lambda _skeleton, index, layer, prefix: quantized_layer(layer, prefix, saved(index, prefix), CPU)


def _engine(output: AscendOutput) -> SavedRunner:
    """Layers rebuilt from an ascendv1 output's files with vllm-ascend's arithmetic (``saved_layer``)."""
    @contextmanager
    def run(skeleton: Skeleton, index: int, layer: torch.nn.Module, _prefix: str) -> Iterator[torch.nn.Module]:
        release(layer)  # saved_layer materialises the same skeleton layer from the output's files
        with saved_layer(skeleton, index, output, CPU) as engine:
            yield engine
    return run


def _walk(model_dir: Path, samples: list[list[int]], run_saved: SavedRunner, *, chained: bool) -> list[float]:
    config = read_model_config(model_dir)
    adapter = adapter_for(config)
    checkpoint = Checkpoint(model_dir)
    skeleton = build_skeleton(model_dir, adapter, CPU, trust_remote_code=False)
    table = checkpoint.load([f"{adapter.embed}.weight"], CPU)[f"{adapter.embed}.weight"]
    hidden = {g: skeleton.embed(torch.tensor(ids), table) for g, ids in enumerate(samples)}
    chain = dict(hidden)
    errors: list[float] = []
    with torch.inference_mode():
        for index in range(skeleton.num_layers):
            prefix = adapter.layer_prefix(index)
            layer = skeleton.layers[index]
            materialise(layer, prefix, checkpoint.load(checkpoint.names_under(prefix), CPU))
            reference = {g: layer_forward(skeleton, index, layer, x) for g, x in hidden.items()}
            inputs = chain if chained else hidden
            with run_saved(skeleton, index, layer, prefix) as saved_layer_module:
                out = {g: layer_forward(skeleton, index, saved_layer_module, x) for g, x in inputs.items()}
            errors.append(_relative(reference, out))
            release(layer)
            hidden, chain = reference, out
    return errors


def layer_errors(model_dir: Path, samples: list[list[int]], saved: LayerSource, *, chained: bool) -> list[float]:
    """Relative output error of every decoder layer (see the module docstring)."""
    return _walk(model_dir, samples, _fake_quantized(saved), chained=chained)


def engine_layer_errors(model_dir: Path, samples: list[list[int]], output_dir: Path) -> list[float]:
    """The per-layer figure of ``quant_errors.json`` (float inputs), recomputed from an ascendv1
    output with the arithmetic vllm-ascend applies to the saved tensors
    (``quantjob.worker.readers.ascend_forward``: bf16-rounded ``1/input_scale``, exact int8 products), so
    a gap to the loop's own figure is what the engine adds to the fake quantization."""
    return _walk(model_dir, samples, _engine(AscendOutput(output_dir)), chained=False)
