"""What vllm-ascend computes with the tensors of an ascendv1 output, emulated on any torch device.

Two layers of API (sources, with file and line, in ``docs/ascend-arithmetic.md``):

- plain functions, one per step the NPU takes for a quantized linear: the reciprocal input scale
  vllm-ascend precomputes (:func:`input_scale_reciprocal`), static activation quantization
  (:func:`quantize_static`), per-token dynamic quantization (:func:`quantize_per_token`), the
  int8 matmul with exact integer accumulation (:func:`integer_matmul`), and the three linears
  (:func:`w8a8_static_linear`, :func:`w8a8_dynamic_linear`, :func:`weight_only_linear`), and a
  MoE layer's W8A8_DYNAMIC routed experts (:func:`w8a8_dynamic_expert` for one expert's tokens,
  :func:`w8a8_dynamic_moe` for routing, weighting and summing; :func:`dynamic_experts` takes them
  from a saved layer as vllm-ascend's MoE loader would);
- an output directory opened for reading (:class:`AscendOutput`) and one decoder layer of it
  rebuilt from the saved files (:func:`saved_layer`): the float tensors go into the model's own
  layer code, every quantized linear is replaced by an :class:`AscendLinear` that computes what
  vllm-ascend computes from the saved tensors alone.

Where the NPU works on integers (int8 inputs, int32 accumulation) the emulation is exact: the
products of int8 values are summed in float32 over blocks of at most 1024 inputs (every partial
sum is an integer below 2^24, so no rounding) and the blocks in float64. The steps the NPU takes
in float32 (scaling by ``deq_scale``, per-token scales) are done in float32 here, and the output is
rounded to the model dtype as the kernel's ``output_dtype`` says. What is not known from public
sources (the kernels' internal order of float operations, their tie rounding) is stated in the
docs; rounding is half to even (``torch.round``), which CANN's Round also uses.

Typical use (the per-layer error of a saved model, float inputs ``hidden``)::

    output = AscendOutput(save_path)
    skeleton = build_skeleton(model_dir, adapter, device, trust_remote_code=False)
    with saved_layer(skeleton, index, output, device) as layer:
        y = layer_forward(skeleton, index, layer, hidden)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from quantjob.formats.ascendv1 import DESCRIPTION
from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.checkpoint import TensorInfo, load_tensor, read_header
from quantjob.worker.model.decoder import Skeleton, materialise, release
from quantjob.worker.model.experts import expert_modules
from quantjob.worker.savers.ascend_tensors import FLOAT, deq_scale_value

WEIGHTS_GLOB = "quant_model_weights*.safetensors"

AscendScheme = Literal["W8A8", "W8A8_DYNAMIC", "W8A16", "W4A16"]
SCHEMES: tuple[AscendScheme, ...] = ("W8A8", "W8A8_DYNAMIC", "W8A16", "W4A16")

INT8_MIN, INT8_MAX = -128, 127
# int8 x int8 products are at most 128 * 128 = 2^14 in magnitude: a float32 sum of 1024 of them
# stays an integer below 2^24, which float32 holds exactly whatever the summation order.
EXACT_BLOCK = 1024

# The tensors each scheme's linear reads (vllm-ascend's parameters of that scheme).
SCHEME_TENSORS: dict[str, tuple[str, ...]] = {
    "W8A8": ("weight", "input_scale", "input_offset", "deq_scale", "quant_bias"),
    "W8A8_DYNAMIC": ("weight", "weight_scale"),
    "W8A16": ("weight", "weight_scale", "weight_offset"),
    "W4A16": ("weight", "weight_scale", "weight_offset"),
}


# ---------------------------------------------------------------------------------------------
# The arithmetic, as plain functions


def input_scale_reciprocal(input_scale: torch.Tensor) -> torch.Tensor:
    """``1 / input_scale`` rounded to ``input_scale``'s dtype (bf16 for a bf16 model): vllm-ascend
    computes the reciprocal once, on the parameter in the model dtype, and multiplies by it."""
    return (1.0 / input_scale.to(torch.float32)).to(input_scale.dtype)


def quantize_static(x: torch.Tensor, input_scale: torch.Tensor, input_offset: torch.Tensor, *,
                    divide: bool = False) -> torch.Tensor:
    """int8 activations of a static W8A8 linear: ``clamp(round(x * r + offset), -128, 127)`` with
    ``r = input_scale_reciprocal(input_scale)`` (``npu_quantize`` with ``div_mode=False``, the
    eager path). ``divide=True`` gives the fused norm-and-quantize path instead, which divides by
    ``input_scale`` itself. ``input_offset`` is the saved int8 zero point."""
    values = x.to(torch.float32)
    if divide:
        values = values / input_scale.to(torch.float32)
    else:
        values = values * input_scale_reciprocal(input_scale).to(torch.float32)
    return values.add_(input_offset.to(torch.float32)).round_().clamp_(INT8_MIN, INT8_MAX).to(torch.int8)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``npu_dynamic_quant``: per token (last dim), ``scale = max|x| / 127`` (float32) and
    ``x_q = round(x / scale)`` in int8. Returns ``(x_q, scale [..., 1])``; an all-zero token gets
    scale 0 and integers 0 (its output is 0 whatever the weight)."""
    values = x.to(torch.float32)
    scale = values.abs().amax(dim=-1, keepdim=True) / INT8_MAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (values / safe).round_().clamp_(INT8_MIN, INT8_MAX).to(torch.int8)
    return q, scale


def integer_matmul(x_q: torch.Tensor, weight_q: torch.Tensor) -> torch.Tensor:
    """``x_q @ weight_q^T`` for int8 ``x_q [..., K]`` and int8 ``weight_q [N, K]``, exactly, as
    float64 integers (the int32 accumulator of ``npu_quant_matmul``)."""
    if x_q.dtype != torch.int8 or weight_q.dtype != torch.int8:
        raise ValueError(f"integer_matmul needs int8 operands, got {x_q.dtype} and {weight_q.dtype}")
    inputs = x_q.shape[-1]
    if weight_q.shape[1] != inputs:
        raise ValueError(f"integer_matmul: input width {inputs} does not match weight {tuple(weight_q.shape)}")
    total: torch.Tensor | None = None
    for start in range(0, inputs, EXACT_BLOCK):
        block = (x_q[..., start:start + EXACT_BLOCK].to(torch.float32)
                 @ weight_q[:, start:start + EXACT_BLOCK].to(torch.float32).T).to(torch.float64)
        total = block if total is None else total.add_(block)
    if total is None:  # zero input features
        return torch.zeros(*x_q.shape[:-1], weight_q.shape[0], dtype=torch.float64, device=x_q.device)
    return total


def w8a8_static_linear(x: torch.Tensor, weight: torch.Tensor, input_scale: torch.Tensor,
                       input_offset: torch.Tensor, deq_scale: torch.Tensor, quant_bias: torch.Tensor, *,
                       divide: bool = False) -> torch.Tensor:
    """A static W8A8 linear: ``deq_scale * (x_q @ W^T + quant_bias)`` in float32, rounded to the
    model dtype (the dtype of ``input_scale``). ``deq_scale`` as saved: float32, or int64 bits for
    fp16 models. The float ``bias`` is not read: ``quant_bias`` carries it."""
    x_q = quantize_static(x, input_scale, input_offset, divide=divide)
    accumulated = integer_matmul(x_q, weight).add_(quant_bias.to(torch.float64))
    # the int32 accumulator becomes float32 before the scale is applied
    out = accumulated.to(torch.float32) * deq_scale_value(deq_scale).to(x.device)
    return out.to(input_scale.dtype)


def w8a8_dynamic_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """A W8A8_DYNAMIC linear: ``(x_q @ W^T) * weight_scale * token_scale + bias`` in float32,
    rounded to ``x``'s dtype. ``weight_offset`` is not read (vllm-ascend passes none)."""
    x_q, token_scale = quantize_per_token(x)
    out = integer_matmul(x_q, weight).to(torch.float32)
    out = out * weight_scale.reshape(-1).to(torch.float32) * token_scale
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype)


def dequantized_weight(weight: torch.Tensor, weight_scale: torch.Tensor, weight_offset: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
    """``(weight + weight_offset) * weight_scale`` in ``dtype`` (the activation dtype), the
    antiquant step of ``npu_weight_quant_batchmatmul``: the saved offset is added, not subtracted.
    Per-channel ``[out, 1]`` or per-group ``[out, in // group]`` scales and offsets."""
    out_features, in_features = weight.shape
    scale, offset = weight_scale.to(torch.float32), weight_offset.to(torch.float32)
    scale, offset = scale.reshape(out_features, -1), offset.reshape(out_features, -1)
    groups = scale.shape[1]
    if in_features % groups:
        raise ValueError(f"weight_scale has {groups} groups, which do not divide {in_features} inputs")
    if groups > 1:
        scale = scale.repeat_interleave(in_features // groups, dim=1)
        offset = offset.repeat_interleave(in_features // groups, dim=1)
    return ((weight.to(torch.float32) + offset) * scale).to(dtype)


def weight_only_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                       weight_offset: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A weight-only (W8A16) linear: the weight dequantized to ``x``'s dtype, multiplied with
    float32 accumulation, plus the bias, rounded to ``x``'s dtype."""
    w = dequantized_weight(weight, weight_scale, weight_offset, x.dtype)
    out = x.to(torch.float32) @ w.to(torch.float32).T
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# A MoE layer's routed experts (W8A8_DYNAMIC, vllm-ascend's only int8 MoE scheme)


@dataclass(frozen=True)
class DynamicExpert:
    """One routed expert's saved W8A8_DYNAMIC tensors: int8 ``[out, in]`` weights and per-channel
    ``[out, 1]`` scales of its gate, up and down projections (vllm-ascend stacks gate and up into
    ``w13`` and down into ``w2``; the offsets are loaded but never read)."""

    gate_weight: torch.Tensor
    gate_scale: torch.Tensor
    up_weight: torch.Tensor
    up_scale: torch.Tensor
    down_weight: torch.Tensor
    down_scale: torch.Tensor


def _dequantized_matmul(x_q: torch.Tensor, token_scale: torch.Tensor, weight: torch.Tensor,
                        weight_scale: torch.Tensor) -> torch.Tensor:
    """``npu_grouped_matmul`` with ``scale`` and ``per_token_scale``: the int32 accumulator times the
    channel scale and the token scale, in float32 (not yet rounded)."""
    return integer_matmul(x_q, weight).to(torch.float32) * weight_scale.reshape(-1).to(torch.float32) * token_scale


def w8a8_dynamic_expert(x: torch.Tensor, expert: DynamicExpert, *, fused: bool = False) -> torch.Tensor:
    """One expert's SwiGLU MLP on the tokens routed to it, as vllm-ascend's W8A8_DYNAMIC MoE computes it
    (``ops/fused_moe/moe_mlp.py`` ``quant_apply_mlp``): the tokens quantized per token
    (``npu_dynamic_quant``), gate and up as one int8 matmul dequantized by the channel and token
    scales, ``silu(gate) * up``, quantized per token again, down likewise; the result in ``x``'s dtype.

    ``fused=False`` is the grouped-matmul path (``npu_grouped_matmul`` with ``output_dtype`` the model
    dtype, then ``npu_swiglu`` and ``npu_dynamic_quant``): gate/up and the SwiGLU output are rounded
    to the model dtype. ``fused=True`` is the MC2 path (int32 ``npu_grouped_matmul``, then
    ``npu_dequant_swiglu_quant``): dequantization, SwiGLU and requantization stay in float32.
    """
    x_q, token_scale = quantize_per_token(x)
    gate = _dequantized_matmul(x_q, token_scale, expert.gate_weight, expert.gate_scale)
    up = _dequantized_matmul(x_q, token_scale, expert.up_weight, expert.up_scale)
    if not fused:
        gate, up = gate.to(x.dtype).to(torch.float32), up.to(x.dtype).to(torch.float32)
    hidden = torch.nn.functional.silu(gate) * up
    if not fused:
        hidden = hidden.to(x.dtype)
    h_q, h_scale = quantize_per_token(hidden)
    return _dequantized_matmul(h_q, h_scale, expert.down_weight, expert.down_scale).to(x.dtype)


def w8a8_dynamic_moe(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                     experts: dict[int, DynamicExpert], *, fused: bool = False) -> torch.Tensor:
    """The routed experts of a MoE layer for tokens ``x [T, H]``: each token goes through its top-k
    experts only (``topk_ids [T, k]``), each output is weighted by the token's router weight (cast to
    the model dtype, as ``AscendW8A8DynamicFusedMoEMethod.apply`` casts ``topk_weights``) and the k
    outputs are summed in float32 and rounded once to ``x``'s dtype (the dispatcher's finalize step).
    Shared experts and a routed scaling factor are the MoE module's, not this function's.

    Experts no token is routed to need not be in ``experts``; a routed one that is missing is an error."""
    if x.dim() != 2 or topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"w8a8_dynamic_moe: x {tuple(x.shape)}, topk_ids {tuple(topk_ids.shape)} and "
                         f"topk_weights {tuple(topk_weights.shape)} do not fit [T, H], [T, k], [T, k]")
    weights = topk_weights.to(x.dtype).to(torch.float32)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for expert_id in sorted(int(e) for e in torch.unique(topk_ids).tolist()):
        if expert_id not in experts:
            raise QuantJobError(f"tokens are routed to expert {expert_id}, which the saved layer does not hold "
                                "(its experts: " + ", ".join(str(e) for e in sorted(experts)[:8])
                                + (" ..." if len(experts) > 8 else "") + "); re-run the quantization")
        tokens, slot = (topk_ids == expert_id).nonzero(as_tuple=True)
        y = w8a8_dynamic_expert(x[tokens], experts[expert_id], fused=fused).to(torch.float32)
        out.index_add_(0, tokens, y * weights[tokens, slot].unsqueeze(1))
    return out.to(x.dtype)


def dynamic_experts(quantized: dict[str, SavedLinear], experts_prefix: str) -> dict[int, DynamicExpert]:
    """The routed experts under ``experts_prefix`` (``model.layers.3.mlp.experts``) of a saved layer's
    quantized linears, checked as vllm-ascend's MoE loader would take them: every projection of every
    expert W8A8_DYNAMIC (it takes the scheme of experts.0's gate/up/down for all of them), int8
    ``[out, in]`` weights and ``[out, 1]`` scales, gate and up of one shape, down their transpose."""
    found: dict[int, dict[str, SavedLinear]] = {}
    start = experts_prefix + "."
    for module, linear in quantized.items():
        if not module.startswith(start):
            continue
        number, _, projection = module[len(start):].partition(".")
        if not number.isdigit() or projection not in ("gate_proj", "up_proj", "down_proj"):
            raise QuantJobError(f"{module}: not a routed expert's gate_proj, up_proj or down_proj")
        found.setdefault(int(number), {})[projection] = linear
    experts: dict[int, DynamicExpert] = {}
    for index, parts in sorted(found.items()):
        name = f"{experts_prefix}.{index}"
        missing = [p for p in ("gate_proj", "up_proj", "down_proj") if p not in parts]
        if missing:
            raise QuantJobError(f"{name}: {', '.join(missing)} not saved quantized while the other projections "
                                "are; vllm-ascend needs one scheme on every expert projection; re-run the quantization")
        odd = {p: linear.scheme for p, linear in parts.items() if linear.scheme != "W8A8_DYNAMIC"}
        if odd:
            raise QuantJobError(f"{name}: described {odd}; vllm-ascend's only int8 MoE scheme is W8A8_DYNAMIC")
        gate, up, down = (parts[p].tensors for p in ("gate_proj", "up_proj", "down_proj"))
        shapes = [tuple(t["weight"].shape) for t in (gate, up, down)]
        if shapes[0] != shapes[1] or shapes[2] != shapes[0][::-1] or any(len(s) != 2 for s in shapes):
            raise QuantJobError(f"{name}: gate/up/down weights {shapes} are not [I, H], [I, H], [H, I]")
        for projection, tensors in zip(("gate_proj", "up_proj", "down_proj"), (gate, up, down)):
            out_features = tensors["weight"].shape[0]
            if tensors["weight"].dtype != torch.int8 or tuple(tensors["weight_scale"].shape) != (out_features, 1):
                raise QuantJobError(f"{name}.{projection}: W8A8_DYNAMIC needs an int8 weight and a "
                                    f"[{out_features}, 1] weight_scale")
        experts[index] = DynamicExpert(gate["weight"], gate["weight_scale"], up["weight"], up["weight_scale"],
                                       down["weight"], down["weight_scale"])
    return experts


# ---------------------------------------------------------------------------------------------
# One quantized linear as a module


class AscendLinear(torch.nn.Module):
    """A quantized linear computing what vllm-ascend computes from its saved tensors.

    ``tensors`` maps the saved suffixes (``weight``, ``input_scale``, ``deq_scale``, ...) to
    tensors; ``bias`` is the float bias the engine adds (None when it has none: vLLM drops a
    ``.bias`` for a linear that has no bias parameter). The tensors are plain attributes, not
    parameters or buffers, so the decoder layer's ``state_dict`` no longer names this module.
    """

    def __init__(self, name: str, scheme: str, tensors: dict[str, torch.Tensor],
                 bias: torch.Tensor | None = None, *, divide: bool = False) -> None:
        super().__init__()
        if scheme not in SCHEME_TENSORS:
            raise QuantJobError(f"{name}: quantization type {scheme!r} has no emulation; known types: "
                                f"{', '.join(SCHEME_TENSORS)}")
        missing = [suffix for suffix in SCHEME_TENSORS[scheme] if suffix not in tensors]
        if missing:
            raise QuantJobError(f"{name}: {scheme} needs {', '.join(f'{name}.{s}' for s in missing)}, "
                                "missing from the saved weights; re-run the quantization")
        if tensors["weight"].dtype != torch.int8 or tensors["weight"].dim() != 2:
            raise QuantJobError(f"{name}.weight: {scheme} needs an int8 [out, in] weight, got "
                                f"{tensors['weight'].dtype} {tuple(tensors['weight'].shape)}")
        self.name, self.scheme, self.divide = name, scheme, divide
        self.tensors = dict(tensors)
        self.bias_tensor = bias
        self.out_features, self.in_features = tensors["weight"].shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tensors
        if self.scheme == "W8A8":
            return w8a8_static_linear(x, t["weight"], t["input_scale"], t["input_offset"], t["deq_scale"],
                                      t["quant_bias"], divide=self.divide)
        if self.scheme == "W8A8_DYNAMIC":
            return w8a8_dynamic_linear(x, t["weight"], t["weight_scale"], self.bias_tensor)
        return weight_only_linear(x, t["weight"], t["weight_scale"], t["weight_offset"], self.bias_tensor)

    def extra_repr(self) -> str:
        return f"{self.name}, {self.scheme}, in={self.in_features}, out={self.out_features}"


class AscendExperts(torch.nn.Module):
    """A MoE layer's routed experts computing what vllm-ascend's W8A8_DYNAMIC MoE method computes
    (:func:`w8a8_dynamic_moe`); it takes the place of the layer's ``ExpertLinears``
    (``quantjob.worker.model.experts``) and is called the same way: ``(hidden_states, top_k_index,
    top_k_weights)``. The router and the shared experts stay the model's own modules."""

    def __init__(self, name: str, experts: dict[int, DynamicExpert], *, fused: bool = False) -> None:
        super().__init__()
        self.name, self.experts, self.fused = name, experts, fused

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        return w8a8_dynamic_moe(hidden_states, top_k_index, top_k_weights, self.experts, fused=self.fused)

    def extra_repr(self) -> str:
        return f"{self.name}, W8A8_DYNAMIC, experts={len(self.experts)}, fused={self.fused}"


# ---------------------------------------------------------------------------------------------
# An output directory, read


@dataclass
class SavedLinear:
    """One quantized linear as saved: its scheme, its tensors by suffix (``weight``, ``deq_scale``,
    ...) and its float bias (None when none was saved)."""

    scheme: str
    tensors: dict[str, torch.Tensor]
    bias: torch.Tensor | None = None


@dataclass
class LayerTensors:
    """One decoder layer of a saved model: quantized linears by module name, float tensors by name."""

    quantized: dict[str, SavedLinear]
    float_tensors: dict[str, torch.Tensor]


class SavedModel(Protocol):
    """A quantized output that :func:`saved_layer` can rebuild layers from: its tensors by name
    (headers), loading some of them, and one decoder layer's tensors split by linear."""

    directory: Path
    tensors: dict[str, TensorInfo]

    def load(self, names: list[str], device: torch.device) -> dict[str, torch.Tensor]: ...

    def layer_tensors(self, prefix: str, device: torch.device) -> LayerTensors: ...


class AscendOutput:
    """An ascendv1 output directory opened for reading: its description and every tensor of its
    weight files (headers only until :meth:`load`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        path = self.directory / DESCRIPTION
        try:
            description = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise QuantJobError(f"{path} is missing: {self.directory} is not an ascendv1 output "
                                "(quantize into it first, or point at the output directory)") from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise QuantJobError(f"{path} is unreadable or not JSON ({error}); re-run the quantization") from error
        if not isinstance(description, dict):
            raise QuantJobError(f"{path} must hold a JSON object; re-run the quantization")
        self.description: dict[str, Any] = description
        files = sorted(self.directory.glob(WEIGHTS_GLOB))
        if not files:
            raise QuantJobError(f"{self.directory} has {DESCRIPTION} but no {WEIGHTS_GLOB} file; "
                                "re-run the quantization")
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            self.tensors.update(read_header(file))
        undescribed = sorted(name for name in self.tensors if name not in description)
        if undescribed:
            raise QuantJobError(f"{path} does not describe {', '.join(undescribed[:5])}"
                                f"{' ...' if len(undescribed) > 5 else ''}; the output is inconsistent, "
                                "re-run the quantization")

    def names_under(self, prefix: str) -> list[str]:
        return sorted(name for name in self.tensors if name.startswith(prefix))

    def load(self, names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name in names:
            if name not in self.tensors:
                raise QuantJobError(f"{self.directory}: tensor {name!r} is missing from the weight files; "
                                    "re-run the quantization")
            out[name] = load_tensor(name, self.tensors[name]).to(device)
        return out

    def quant_type(self, module: str) -> str:
        """The type vllm-ascend gives ``module`` (from ``<module>.weight``'s description entry)."""
        return str(self.description.get(f"{module}.weight", FLOAT))

    def quantized_modules(self, prefix: str) -> list[str]:
        """Modules under ``prefix`` whose weight is described as quantized."""
        return sorted(name[:-len(".weight")] for name in self.names_under(prefix)
                      if name.endswith(".weight") and self.quant_type(name[:-len(".weight")]) != FLOAT)

    def layer_tensors(self, prefix: str, device: torch.device) -> LayerTensors:
        """Every tensor under ``prefix``: quantized linears by module, the rest by full name."""
        tensors = self.load(self.names_under(prefix), device)
        quantized: dict[str, SavedLinear] = {}
        for module in self.quantized_modules(prefix):
            own = {name[len(module) + 1:]: tensor for name, tensor in tensors.items()
                   if name.startswith(module + ".") and "." not in name[len(module) + 1:]}
            bias = own.pop("bias", None)
            quantized[module] = SavedLinear(self.quant_type(module), own, bias)
        taken = {f"{module}.{suffix}" for module, linear in quantized.items()
                 for suffix in [*linear.tensors, *(["bias"] if linear.bias is not None else [])]}
        return LayerTensors(quantized, {name: t for name, t in tensors.items() if name not in taken})


@contextmanager
def saved_layer(skeleton: Skeleton, index: int, output: SavedModel, device: torch.device, *,
                divide: bool = False, fused_moe: bool = False) -> Iterator[torch.nn.Module]:
    """Decoder layer ``index`` rebuilt from ``output``'s files alone, on ``device``.

    Float tensors are materialised into the skeleton's layer; every quantized linear is swapped
    for an :class:`AscendLinear` (its float bias used only when the model's linear has a bias, as
    vLLM loads it); a ``<norm>.bias`` saved for a norm without one (asymmetric smoothing) is added
    to that norm's output, as vllm-ascend's RMSNorm does. A MoE layer's routed experts saved
    W8A8_DYNAMIC become one :class:`AscendExperts` (vllm-ascend's fused MoE arithmetic; ``fused_moe``
    selects its MC2 path); experts saved float run as the model's own. On exit the original modules
    come back and the layer returns to the meta device, so the skeleton can be used again.
    """
    prefix = skeleton.adapter.layer_prefix(index)
    layer = skeleton.layers[index]
    saved = output.layer_tensors(prefix, device)
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    hooks: list[Any] = []
    try:
        quantized = dict(saved.quantized)
        for path, experts_module in expert_modules(layer).items():
            name = prefix + path
            mine = {module: quantized.pop(module) for module in list(quantized) if module.startswith(name + ".")}
            if not mine:
                continue  # float experts: materialised below and run as the model's own
            experts = dynamic_experts(mine, name)
            if len(experts) != experts_module.num_experts:
                floats = sorted(set(range(experts_module.num_experts)) - set(experts))
                raise QuantJobError(f"{name}: experts {floats[:8]} are not saved quantized while others are "
                                    "W8A8_DYNAMIC; vllm-ascend loads every expert with experts.0's scheme; "
                                    "re-run the quantization")
            parent_name, _, child = path.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            setattr(parent, child, AscendExperts(name, experts, fused=fused_moe))
            swapped.append((parent, child, experts_module))
        for module, linear in quantized.items():
            scheme, own, bias = linear.scheme, linear.tensors, linear.bias
            local = module[len(prefix):]
            try:
                original = layer.get_submodule(local)
            except AttributeError as error:
                raise QuantJobError(f"{output.directory}: {module} is described as {scheme} but the model has no "
                                    "such module; the output does not match its config.json") from error
            if not isinstance(original, torch.nn.Linear):
                raise QuantJobError(f"{module}: described as {scheme} but it is a {type(original).__name__}, "
                                    "not a linear")
            if tuple(own["weight"].shape) != (original.out_features, original.in_features):
                raise QuantJobError(f"{module}.weight: saved shape {tuple(own['weight'].shape)}, the model "
                                    f"expects {(original.out_features, original.in_features)}")
            parent_name, _, child = local.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            engine_bias = bias if original.bias is not None else None
            setattr(parent, child, AscendLinear(module, scheme, own, engine_bias, divide=divide))
            swapped.append((parent, child, original))
        float_tensors, hooks = _norm_biases(layer, prefix, saved.float_tensors)
        materialise(layer, prefix, float_tensors)
        yield layer
    finally:
        for handle in hooks:
            handle.remove()
        for parent, child, original in reversed(swapped):
            setattr(parent, child, original)
        release(layer)


def _norm_biases(layer: torch.nn.Module, prefix: str, tensors: dict[str, torch.Tensor],
                 ) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Take ``<module>.bias`` tensors for modules that have no bias (norms after asymmetric
    smoothing) out of ``tensors`` and add each to its module's output with a forward hook."""
    expected = set(layer.state_dict())
    rest: dict[str, torch.Tensor] = {}
    hooks: list[Any] = []
    for name, tensor in tensors.items():
        local = name[len(prefix):]
        if local in expected or not local.endswith(".bias"):
            rest[name] = tensor
            continue
        try:
            module = layer.get_submodule(local[:-len(".bias")])
        except AttributeError:
            rest[name] = tensor  # materialise names it as unexpected
            continue
        if isinstance(module, torch.nn.Linear) or getattr(module, "bias", None) is not None:
            rest[name] = tensor
            continue

        def add_bias(_module: torch.nn.Module, _args: Any, out: torch.Tensor,
                     bias: torch.Tensor = tensor) -> torch.Tensor:
            return out + bias.to(out.dtype)

        hooks.append(module.register_forward_hook(add_bias))
    return rest, hooks
