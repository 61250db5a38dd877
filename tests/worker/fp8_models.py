"""FP8 block-scaled copies of the tiny demo models, written the way DeepSeek-V3 is published: every
decoder linear's weight as F8_E4M3 with a float32 ``weight_scale_inv`` per block (the block's
absolute maximum over 448, e4m3's largest value), config.json declaring ``quant_method: fp8``.

``write_fp8_model`` also writes the float reference: the same model with each FP8 weight replaced
by its dequantization, computed here independently of ``quantjob.worker.model.fp8`` (an index gather of
the block factors rather than its row-block loop)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

E4M3_MAX = 448.0


def quantize_blocks(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(F8_E4M3 weight, float32 scale_inv [ceil(rows / b0), ceil(cols / b1)]) of a float weight."""
    rows, cols = weight.shape
    grid = (-(-rows // block[0]), -(-cols // block[1]))
    scale = torch.empty(grid, dtype=torch.float32)
    fp8 = torch.empty((rows, cols), dtype=torch.float8_e4m3fn)
    w = weight.float()
    for i in range(grid[0]):
        for j in range(grid[1]):
            tile = w[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]]
            factor = max(float(tile.abs().max()), 1e-12) / E4M3_MAX
            scale[i, j] = factor
            fp8[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]] = \
                (tile / scale[i, j]).to(torch.float8_e4m3fn)
    return fp8, scale


def reference_dequant(fp8: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                      dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Element (i, j) = float32(fp8[i, j]) * scale_inv[i // b0, j // b1], rounded once to ``dtype``."""
    rows, cols = fp8.shape
    factors = scale_inv.float()[torch.arange(rows) // block[0]][:, torch.arange(cols) // block[1]]
    return (fp8.float() * factors).to(dtype)


def write_fp8_model(source: Path, fp8_dir: Path, reference_dir: Path, block: tuple[int, int] = (128, 128),
                    *, also: tuple[str, ...] = ()) -> None:
    """``fp8_dir``: ``source`` with its decoder linears (and the weights named in ``also``) in FP8;
    ``reference_dir``: its float twin."""
    for target in (fp8_dir, reference_dir):
        shutil.copytree(source, target)
        for file in target.glob("*.safetensors*"):
            file.unlink()
    tensors = load_file(source / "model.safetensors")
    fp8_tensors: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if (name.startswith("model.layers.") and name.endswith("proj.weight")) or name in also:
            fp8, scale = quantize_blocks(tensor, block)
            fp8_tensors[name], fp8_tensors[name + "_scale_inv"] = fp8, scale
            reference[name] = reference_dequant(fp8, scale, block, tensor.dtype)
        else:
            fp8_tensors[name] = reference[name] = tensor
    save_file(fp8_tensors, fp8_dir / "model.safetensors", metadata={"format": "pt"})
    save_file(reference, reference_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    (reference_dir / "config.json").write_text(json.dumps(config, indent=2))
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": list(block)}
    (fp8_dir / "config.json").write_text(json.dumps(config, indent=2))
