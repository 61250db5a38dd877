"""Biases a processor adds to modules that the model's own code builds without one.

Asymmetric smoothing shifts a norm's output (the shift is saved as ``<norm>.bias``, which
vllm-ascend's RMSNorm adds after normalising) and gives its consumer linears a bias. The
transformers skeleton has no bias parameter on an RMSNorm, and none on a linear built with
``bias=False``, so the layer's forward would ignore such tensors. ``add_bias`` registers the
parameter (and, for a module whose forward does not read ``self.bias``, a forward hook that adds it
to the output, in the output's dtype as vllm-ascend does); ``remove_added_biases`` puts the layer
back as the model's code built it. A layer rebuilt from saved records (fresh or on resume) gets the
biases its records hold through ``add_missing_biases``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

_MARK = "_quantjob_added_bias"


def _reads_bias(module: torch.nn.Module) -> bool:
    """Modules whose forward already adds ``self.bias`` when it is set."""
    return isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm))


def _add_to_output(module: torch.nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    bias = module.bias
    assert isinstance(bias, torch.Tensor)
    return output + bias


def has_bias(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "bias", None), torch.Tensor)


def add_bias(module: torch.nn.Module, bias: torch.Tensor) -> None:
    """Give ``module`` a bias (or replace the one it has) that its forward applies."""
    if has_bias(module):
        module.bias = torch.nn.Parameter(bias, requires_grad=False)
        return
    if getattr(module, "bias", None) is not None:
        raise ValueError(f"{type(module).__name__} has a non-tensor attribute 'bias'; cannot add a bias to it")
    if hasattr(module, "bias"):  # registered as None (a Linear built with bias=False)
        del module.bias
    module.register_parameter("bias", torch.nn.Parameter(bias, requires_grad=False))
    handle = None if _reads_bias(module) else module.register_forward_hook(_add_to_output)
    setattr(module, _MARK, handle)


def added_bias_modules(layer: torch.nn.Module) -> list[str]:
    """Names (relative to ``layer``) of the modules whose bias was added here."""
    return [name for name, module in layer.named_modules() if hasattr(module, _MARK)]


def remove_added_biases(layer: torch.nn.Module) -> None:
    """Undo every ``add_bias`` under ``layer``: the modules are as the model's code built them."""
    for _, module in layer.named_modules():
        if not hasattr(module, _MARK):
            continue
        handle = getattr(module, _MARK)
        if handle is not None:
            handle.remove()
        delattr(module, _MARK)
        del module._parameters["bias"]
        if _reads_bias(module):
            module.register_parameter("bias", None)


def add_missing_biases(layer: torch.nn.Module, names: Iterable[str], device: torch.device | str = "meta") -> None:
    """For every ``<module>.bias`` in ``names`` (relative to ``layer``) whose module has no bias, add
    an empty one on ``device`` (``materialise`` then assigns the real tensor)."""
    for name in names:
        if not name.endswith(".bias"):
            continue
        path = name[:-len(".bias")]
        try:
            module = layer.get_submodule(path)
        except AttributeError:
            continue  # not a module of this layer: materialise reports it
        if has_bias(module):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        add_bias(module, torch.empty(weight.shape[0], dtype=weight.dtype, device=device))
