"""FP8 block-scaled checkpoints (DeepSeek-V3/R1, Kimi-K2), read as float one tensor at a time.

Such a checkpoint's config.json declares ``quantization_config: {quant_method: fp8, fmt: e4m3,
weight_block_size: [128, 128], activation_scheme: dynamic}``; each quantized linear stores
``<name>.weight`` as F8_E4M3 ``[out, in]`` and ``<name>.weight_scale_inv`` as float32
``[ceil(out / 128), ceil(in / 128)]``, one factor per 128 x 128 block, the last row and column of
blocks partial when a dimension is not a multiple of 128.

The arithmetic is the one both references use: every FP8 value widened to float32, multiplied in
float32 by its block's factor, the product rounded once to the compute dtype (bf16).
DeepSeek's own ``weight_dequant`` (deepseek-ai/DeepSeek-V3, ``inference/kernel.py``, used by
``inference/fp8_cast_bf16.py``) loads each 128 x 128 tile masked at the edges, multiplies by the
tile's ``s[pid_m * cdiv(N, 128) + pid_n]`` in float32 and stores into a bf16 tensor; transformers'
``Fp8Dequantize._dequantize_one`` (``src/transformers/integrations/finegrained_fp8.py``) does the
same product in float32 and one ``.to(output_dtype)`` (it needs whole blocks; edges are handled
here as DeepSeek's kernel does). Other ``quant_method`` values (an already quantized checkpoint:
gptq, awq, compressed-tensors, ...) are refused: quantizing needs the float weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantjob.worker.errors import QuantJobError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads config.json before launching
    import torch

SCALE_SUFFIX = "_scale_inv"           # "<module>.weight" + SCALE_SUFFIX
FP8_DTYPES = ("F8_E4M3",)             # the stored dtype the fp8 method writes (fmt e4m3)
COMPUTE_DTYPE = "BF16"                # what the weights are dequantized to (DeepSeek's default dtype)


@dataclass(frozen=True)
class Fp8Blocks:
    """A checkpoint's FP8 layout: the block of one scale, ``(rows, columns)``."""

    block: tuple[int, int] = (128, 128)
    compute_dtype: str = COMPUTE_DTYPE


def _quantization(model_config: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The ``quantization_config`` of config.json (top level, or a multimodal ``text_config``'s)."""
    for where, holder in (("quantization_config", model_config),
                          ("text_config.quantization_config", model_config.get("text_config"))):
        if isinstance(holder, dict) and holder.get("quantization_config") is not None:
            return where, holder["quantization_config"]
    return None


def fp8_blocks(model_config: dict[str, Any], config_file: str) -> Fp8Blocks | None:
    """The FP8 layout config.json declares, None for a float checkpoint; QuantJobError naming
    config.json for any other quantization (an already quantized model cannot be quantized again)."""
    found = _quantization(model_config)
    if found is None:
        return None
    where, quant = found
    if not isinstance(quant, dict):
        raise QuantJobError(f"{config_file}: {where} must be an object; re-copy the model")
    method = quant.get("quant_method")
    if method != "fp8":
        raise QuantJobError(
            f"{config_file}: {where}.quant_method is {method!r}: the checkpoint is already quantized; "
            "quantjob reads float checkpoints and FP8 block-scaled ones (quant_method fp8, as DeepSeek-V3 "
            "is published); point --model_path at the model's float (bf16/fp16) release")
    fmt = quant.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise QuantJobError(f"{config_file}: {where}.fmt is {fmt!r}; only e4m3 FP8 checkpoints are read")
    scheme = quant.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise QuantJobError(f"{config_file}: {where}.activation_scheme is {scheme!r}; only FP8 checkpoints with "
                            "dynamic activations (no stored input scales) are read")
    block = quant.get("weight_block_size")
    if (not isinstance(block, list) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise QuantJobError(f"{config_file}: {where}.weight_block_size is {block!r}; an FP8 checkpoint needs two "
                            "positive block sides, e.g. [128, 128] (per-tensor FP8 is not read)")
    return Fp8Blocks((block[0], block[1]))


def scale_grid(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, int]:
    """The ``weight_scale_inv`` shape of a ``[rows, columns]`` weight: one factor per block, edges partial."""
    rows, cols = shape
    return (-(-rows // block[0]), -(-cols // block[1]))


def dequantize_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                      dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` (FP8 ``[rows, cols]``) times its block's ``scale_inv`` factor in float32, rounded
    once to ``dtype``. One row of blocks at a time, so the float32 scratch is ``block[0]`` rows.

    ``out`` (``[rows, cols]`` of ``dtype``) may share its memory with ``weight`` when ``weight``
    occupies its upper half (``dequantize_in_place``): each row block is read whole before it is
    written, and rows ``0..k`` of a 2-byte ``out`` end before the bytes of row ``k + 1`` of a
    1-byte ``weight`` begin."""
    import torch

    rows, cols = weight.shape
    if tuple(scale_inv.shape) != scale_grid((rows, cols), block):
        raise ValueError(f"scale shape {list(scale_inv.shape)} does not fit weight [{rows}, {cols}] in "
                         f"{block[0]}x{block[1]} blocks (expected {list(scale_grid((rows, cols), block))})")
    factors = scale_inv.float()
    if out is None:
        out = torch.empty((rows, cols), dtype=dtype, device=weight.device)
    for index, start in enumerate(range(0, rows, block[0])):
        stop = min(start + block[0], rows)
        row_factors = factors[index].repeat_interleave(block[1])[:cols]  # [cols], edge block cut short
        out[start:stop] = (weight[start:stop].float() * row_factors).to(dtype)
    return out


def read_dequantized(read: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int], scale_inv: torch.Tensor,
                     block: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A weight dequantized into the memory its FP8 bytes were read into: ``read(buffer)`` fills the
    upper half of the result's bytes with the FP8 weight and returns it. No second buffer, so
    loading a layer leaves no freed FP8 buffers between its tensors (the host's RSS stays as for a
    bf16 checkpoint)."""
    import torch

    numel = shape[0] * shape[1]
    size = torch.empty((), dtype=dtype).element_size()
    if size != 2:  # the in-place layout needs a 2-byte result: otherwise a buffer of its own
        return dequantize_blocks(read(torch.empty(numel, dtype=torch.uint8)), scale_inv, block, dtype)
    memory = torch.empty(2 * numel, dtype=torch.uint8)
    weight = read(memory[numel:])
    return dequantize_blocks(weight, scale_inv, block, dtype, out=memory.view(dtype).view(shape))
