"""``linear_quant`` (and ``group``): quantize the selected linears of a layer into records.

Within one layer, a linear already quantized by an earlier entry (an earlier ``group`` config or
an earlier ``linear_quant``) is left alone: the first matching entry wins.
"""

from __future__ import annotations

import torch

from quantjob.api.globs import matches
from quantjob.api.modelslim import Group, LinearQuant
from quantjob.worker.errors import QuantJobError
from quantjob.worker.loop.observers import ACTIVATION_METHODS, WEIGHT_METHODS
from quantjob.worker.loop.records import QuantizedLinear, Scheme
from quantjob.worker.processors.context import LayerContext, Preflight


def scheme_of(entry: LinearQuant) -> Scheme:
    act, weight = entry.qconfig.act, entry.qconfig.weight
    if act is None:
        return "W4A16" if weight.bits == 4 else "W8A16"
    return "W8A8_DYNAMIC" if act.scope == "per_token" else "W8A8"


def quantize_linear(name: str, module: torch.nn.Linear, entry: LinearQuant, ctx: LayerContext) -> QuantizedLinear:
    weight_spec, act = entry.qconfig.weight, entry.qconfig.act
    group_size = weight_spec.group_size if weight_spec.scope == "per_group" else None
    weight_q, weight_scale, weight_offset = WEIGHT_METHODS[weight_spec.method](module.weight.detach(), weight_spec)
    record = QuantizedLinear(
        name=name, scheme=scheme_of(entry), weight_q=weight_q, weight_scale=weight_scale,
        weight_offset=weight_offset, bias=None if module.bias is None else module.bias.detach(),
        dtype=module.weight.dtype, group_size=group_size, weight_symmetric=weight_spec.symmetric)
    if act is not None and act.scope == "per_tensor":
        if not ctx.stats[name].observed:  # reduced statistics: every rank refuses alike
            raise QuantJobError(
                f"{name} (decoder layer {ctx.index}): no calibration token reached this linear on any rank (a routed "
                "expert no token is routed to), so a static activation scale cannot be computed; rerun with "
                "--calibrate_all_experts (every token also goes through every expert, for statistics only), use "
                "per-token dynamic activations (w8a8_dynamic) for the experts, exclude it, or calibrate on more "
                "or more varied samples")
        method = ACTIVATION_METHODS[act.method]
        record.input_scale, record.input_offset = method(ctx.stats[name], act.bits, act.symmetric,
                                                         module.weight.dtype)
        record.act_symmetric = act.symmetric
    return record


def apply_linear_quant(entry: LinearQuant, ctx: LayerContext) -> None:
    for name, module in ctx.linears.items():
        if name not in ctx.records and matches(name, entry.include, entry.exclude):
            ctx.records[name] = quantize_linear(name, module, entry, ctx)


def apply_group(entry: Group, ctx: LayerContext) -> None:
    for config in entry.configs:
        apply_linear_quant(config, ctx)


def static_activations(entry: LinearQuant | Group) -> bool:
    configs = entry.configs if isinstance(entry, Group) else [entry]
    return any(c.qconfig.act is not None and c.qconfig.act.scope == "per_tensor" for c in configs)


def check_shapes(entry: LinearQuant | Group, path: str, view: Preflight) -> list[str]:
    """Problems known from checkpoint headers alone (before any compute): per_group widths."""
    weights = view.shapes
    problems: list[str] = []
    configs = [(f"{path}.configs[{i}]", c) for i, c in enumerate(entry.configs)] if isinstance(entry, Group) \
        else [(path, entry)]
    for at, config in configs:
        spec = config.qconfig.weight
        if spec.scope != "per_group" or not spec.group_size:
            continue
        for module, shape in weights.items():
            if matches(module, config.include, config.exclude) and shape[1] % spec.group_size:
                problems.append(f"{at}.qconfig.weight.ext.group_size: {spec.group_size} does not divide the input "
                                f"width {shape[1]} of {module}; use a divisor of it, or exclude that linear")
                break
    return problems
