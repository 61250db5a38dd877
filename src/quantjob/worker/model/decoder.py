"""One decoder layer at a time: the meta-device skeleton, materialising a layer from tensors,
running one calibration sample through it, and the fake-quantized layer built from records.

Every sample runs alone (batch 1, its own length, no padding): attention is causal through SDPA's
``is_causal`` (mask None), or an explicit boolean mask only where a sliding window is shorter than
the sample. A sample's hidden states are therefore the same bits whichever rank holds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quantjob.families.adapter import LAYER_TYPES, Adapter
from quantjob.worker.errors import QuantJobError
from quantjob.worker.loop.quantizers import dequantize_weight, fake_quantize, fake_quantize_per_token
from quantjob.worker.loop.records import LayerOutput, QuantizedLinear
from quantjob.worker.model.added_biases import add_missing_biases, remove_added_biases
from quantjob.worker.model.experts import fused_experts_to_linears


@dataclass
class Skeleton:
    """The model on the meta device (no memory), its config, and the rotary embedding on ``device``.

    Everything a family does differently (the embedding scale, the rotary embedding per layer type)
    comes from its ``Adapter``; the layer types and the sliding window come from the config.
    """

    config: Any
    model: torch.nn.Module
    adapter: Adapter
    rotary: torch.nn.Module
    device: torch.device
    _positions: dict[tuple[int, torch.dtype, str | None], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.model.get_submodule(self.adapter.layers)  # type: ignore[return-value]

    def embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """One sample's token ids ``[L]`` -> its layer-0 input ``[1, L, H]`` (the family's embedding scale included)."""
        return self.adapter.embed_tokens(ids, table, self.config).unsqueeze(0)

    def layer_type(self, index: int) -> str:
        """``full_attention`` or ``sliding_attention``: the config's ``layer_types`` when it has them,
        else every layer slides when the config sets a ``sliding_window`` (Mistral)."""
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types is not None:
            return str(layer_types[index])
        return "sliding_attention" if getattr(self.config, "sliding_window", None) else "full_attention"

    def position_embeddings(self, index: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of layer ``index`` for positions 0..length-1, computed once per length and dtype
        (and per layer type when the family's rotary embedding depends on it)."""
        layer_type = self.layer_type(index)
        key = (length, dtype, layer_type if self.adapter.rotary_per_layer_type else None)
        if key not in self._positions:
            probe = torch.empty(1, length, 1, dtype=dtype, device=self.device)
            positions = torch.arange(length, device=self.device).unsqueeze(0)
            self._positions[key] = self.adapter.position_embeddings(self.rotary, probe, positions, layer_type)
        return self._positions[key]

    def sliding_window(self, index: int) -> int | None:
        """The attention window of layer ``index`` (None: the layer attends to every earlier token)."""
        window = getattr(self.config, "sliding_window", None)
        if self.layer_type(index) != "sliding_attention" or not window:
            return None
        return int(window)


def _check_layer_types(config: Any, config_file: Path) -> None:
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return
    if len(layer_types) < config.num_hidden_layers:
        raise QuantJobError(f"{config_file}: layer_types lists {len(layer_types)} layers for num_hidden_layers "
                            f"{config.num_hidden_layers}; give one type per layer")
    unknown = sorted(set(layer_types) - set(LAYER_TYPES))
    if unknown:
        raise QuantJobError(f"{config_file}: layer_types {', '.join(map(repr, unknown))} are not supported "
                            f"(supported: {', '.join(LAYER_TYPES)})")


def build_skeleton(model_dir: Path, adapter: Adapter, device: torch.device, *, trust_remote_code: bool) -> Skeleton:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise QuantJobError(f"{model_dir / 'config.json'}: transformers cannot read it "
                            f"({str(error).splitlines()[0]}); check the file or pass --trust_remote_code") from error
    _check_layer_types(config, model_dir / "config.json")
    # An FP8 checkpoint's quantization_config describes how its files are stored, which the
    # checkpoint reader undoes (quantjob.worker.model.fp8); the skeleton is the float model.
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            config, trust_remote_code=trust_remote_code, attn_implementation="sdpa")
    model.requires_grad_(False)
    if adapter.sparse is not None:  # routed experts as one linear per expert (quantjob.worker.model.experts)
        settings = model.config.to_dict()
        layers = model.get_submodule(adapter.layers)
        for index, layer in enumerate(layers):
            if adapter.is_sparse(settings, index):
                fused_experts_to_linears(layer, adapter.sparse.experts)
    meta_rotary = model.get_submodule(adapter.rotary)
    with torch.device(device):
        rotary = type(meta_rotary)(config=model.config)
    return Skeleton(model.config, model, adapter, rotary, device)


def materialise(layer: torch.nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Give a meta layer the real tensors (full names ``prefix + local``), keeping their dtype and bits."""
    local = {name[len(prefix):]: tensor for name, tensor in tensors.items()}
    expected = set(layer.state_dict().keys())
    missing, unexpected = sorted(expected - set(local)), sorted(set(local) - expected)
    if missing or unexpected:
        detail = (f"missing {', '.join(prefix + n for n in missing)}" if missing
                  else f"unexpected {', '.join(prefix + n for n in unexpected)}")
        raise QuantJobError(f"checkpoint tensors do not match the {prefix.rstrip('.')} layout ({detail}); "
                            "check --model_type against the checkpoint, or re-copy the model")
    layer.load_state_dict(local, strict=True, assign=True)


def release(layer: torch.nn.Module) -> None:
    """Drop a layer's tensors (back to the meta device) and any bias a processor added to it."""
    remove_added_biases(layer)
    layer.to_empty(device="meta")


def layer_forward(skeleton: Skeleton, index: int, layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One sample ``[1, L, H]`` through one decoder layer."""
    length = hidden.shape[1]
    position_ids = torch.arange(length, device=hidden.device).unsqueeze(0)
    mask = None
    window = skeleton.sliding_window(index)
    if window is not None and length > window:
        rows = torch.arange(length, device=hidden.device)
        distance = rows.unsqueeze(1) - rows.unsqueeze(0)
        mask = ((distance >= 0) & (distance < window)).view(1, 1, length, length)
    out = layer(hidden, attention_mask=mask, position_ids=position_ids,
                position_embeddings=skeleton.position_embeddings(index, length, hidden.dtype))
    return out[0] if isinstance(out, tuple) else out


def fake_quant_weight(record: QuantizedLinear) -> torch.Tensor:
    """One record's dequantized weight ``[out, in]`` in the model dtype.

    Scales and offsets are first rounded to the model dtype (as the saved files hold them and the
    inference engine uses them), so replaying saved records gives the same bits as fresh ones.
    """
    scale = record.weight_scale.to(record.dtype).float()
    offset = record.weight_offset.to(record.dtype).float()
    return dequantize_weight(record.weight_q, scale, offset, record.dtype)


def fake_quant_weights(records: list[QuantizedLinear]) -> dict[str, torch.Tensor]:
    """Dequantized weights ``{module name: [out, in] in the model dtype}`` from records."""
    return {record.name: fake_quant_weight(record) for record in records}


def _assign(layer: torch.nn.Module, local: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in place of the layer's parameter or buffer ``local``; the tensor it held is
    freed here (unless something else holds it), not after the whole layer is rebuilt."""
    owner, _, attr = local.rpartition(".")
    module = layer.get_submodule(owner) if owner else layer
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def _replace_weight(layer: torch.nn.Module, local: str, tensor: torch.Tensor) -> None:
    """Put a dequantized weight in place of the float one, into the float one's own memory when it
    has the same shape, dtype and device (the float weight is not needed once its record exists):
    the rebuild then allocates one linear's scratch at a time, reused from linear to linear, rather
    than a fresh tensor per linear while the float ones, freed to the read-ahead thread's malloc
    arena, cannot be reused (measured on bench_moe's model: +230 MiB of heap per MoE layer)."""
    owner, _, attr = local.rpartition(".")
    module = layer.get_submodule(owner) if owner else layer
    current = module._parameters.get(attr)
    if (current is not None and current.device == tensor.device and current.shape == tensor.shape
            and current.dtype == tensor.dtype and current.is_contiguous() and not current.is_meta):
        current.data.copy_(tensor)
        return
    _assign(layer, local, tensor)


def _activation_hook(record: QuantizedLinear) -> Any:
    if record.scheme == "W8A8":
        if record.input_scale is None or record.input_offset is None:
            raise ValueError(f"{record.name}: W8A8 record without input_scale/input_offset")
        scale = record.input_scale.to(record.dtype).float()
        offset = record.input_offset.float()

        def static(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (fake_quantize(args[0], scale.to(args[0].device), offset.to(args[0].device), 8), *args[1:])

        return static
    if record.scheme == "W8A8_DYNAMIC":
        def dynamic(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (fake_quantize_per_token(args[0], 8), *args[1:])

        return dynamic
    return None


@contextmanager
def quantized_layer(layer: torch.nn.Module, prefix: str, output: LayerOutput,
                    device: torch.device) -> Iterator[torch.nn.Module]:
    """The layer rebuilt from ``output`` alone: float tensors, dequantized weights, biases, and
    activation fake-quantization hooks (removed on exit). Used for fresh layers and for replay.
    Biases the records hold and the model's modules lack (asymmetric smoothing's shifts) are added
    to the skeleton first (``quantjob.worker.model.added_biases``); ``release`` removes them.

    The layer is rebuilt in place one tensor at a time: each linear's float weight is replaced by
    its dequantized copy as soon as that is made, so the rebuild holds the layer, its int8 codes
    and one dequantized linear at once (not a second, dequantized copy of every linear)."""
    names = [*output.float_tensors, *(f"{r.name}.weight" for r in output.quantized),
             *(f"{r.name}.bias" for r in output.quantized if r.bias is not None)]
    local = [name[len(prefix):] for name in names]
    add_missing_biases(layer, local)
    expected = set(layer.state_dict().keys())
    missing, unexpected = sorted(expected - set(local)), sorted(set(local) - expected)
    if missing or unexpected or len(local) != len(set(local)):
        detail = (f"missing {', '.join(prefix + n for n in missing)}" if missing
                  else f"unexpected {', '.join(prefix + n for n in unexpected)}" if unexpected
                  else "a tensor given twice")
        raise QuantJobError(f"checkpoint tensors do not match the {prefix.rstrip('.')} layout ({detail}); "
                            "check --model_type against the checkpoint, or re-copy the model")
    for name, tensor in output.float_tensors.items():
        _assign(layer, name[len(prefix):], tensor.to(device))
    for record in output.quantized:
        local_name = record.name[len(prefix):]
        _replace_weight(layer, f"{local_name}.weight", fake_quant_weight(record).to(device))
        if record.bias is not None:
            _assign(layer, f"{local_name}.bias", record.bias.to(device))
    handles = []
    for record in output.quantized:
        hook = _activation_hook(record)
        if hook is not None:
            handles.append(layer.get_submodule(record.name[len(prefix):]).register_forward_pre_hook(hook))
    try:
        yield layer
    finally:
        for handle in handles:
            handle.remove()
