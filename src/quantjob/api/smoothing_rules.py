"""Compatibility rules of the smoothing processors and the ssz weight method (``docs/algorithms.md``).

They look at several processors at once (where a smoothing entry stands, which activations the
linears after it get), so they live here rather than in the catalogue. Model-dependent cases
(which linears follow a smoothed norm, whether they already have a bias) are checked again by the
worker before any compute (``quantjob.worker.processors.iter_smooth.check_iter_smooth``).
"""

from __future__ import annotations

from quantjob.api.modelslim import (
    FlexSmoothQuant,
    Group,
    IterSmooth,
    LinearQuant,
    ModelslimConfig,
)
from quantjob.api.problems import Problem
from quantjob.api.processor_registry import smoothing_classes


def _static(entry: LinearQuant) -> bool:
    act = entry.qconfig.act
    return act is not None and act.scope == "per_tensor"


def _scheme(entry: LinearQuant) -> str:
    act, weight = entry.qconfig.act, entry.qconfig.weight
    if act is None:
        return f"weight-only {weight.dtype}"
    return "static per_tensor" if act.scope == "per_tensor" else f"{act.scope} (dynamic)"


def smoothing_problems(config: ModelslimConfig, prefix: str) -> list[Problem]:
    """Problems of the smoothing entries (order, asymmetric shift) and of ssz weights."""
    problems: list[Problem] = []
    first_quant: int | None = None
    for index, proc in enumerate(config.spec.process):
        at = f"{prefix}spec.process[{index}]"
        if isinstance(proc, (LinearQuant, Group)) and first_quant is None:
            first_quant = index
        if not isinstance(proc, smoothing_classes()):
            continue
        if first_quant is not None:
            problems.append(Problem(at, f"{proc.type} after the linear_quant at spec.process[{first_quant}] "
                                                  "would change weights that are already quantized; move it before "
                                                  "every linear_quant and group"))
        if isinstance(proc, IterSmooth):
            problems.extend(_asymmetric(proc, index, config, prefix))
        elif isinstance(proc, FlexSmoothQuant) and (proc.alpha is None) != (proc.beta is None):
            given = "alpha" if proc.alpha is not None else "beta"
            problems.append(Problem(f"{at}.{given}", f"{given} alone is ignored: alpha and beta are both searched "
                                                     "unless both are given (as in msModelSlim); give both to fix "
                                                     "them", "warning"))
    for path, lq in config.linear_quants():
        weight = lq.qconfig.weight
        if weight.method == "ssz" and not weight.symmetric:
            problems.append(Problem(f"{prefix}{path}.qconfig.weight.symmetric",
                                    "method ssz searches symmetric scales only (msModelSlim registers it for "
                                    "symmetric per_channel int8/int4); set symmetric: true or use method minmax"))
    return problems


def _asymmetric(proc: IterSmooth, index: int, config: ModelslimConfig, prefix: str) -> list[Problem]:
    """symmetric: false gives every linear after a smoothed norm a bias (``W z``), which vllm-ascend
    keeps only in W8A8's ``quant_bias`` or where the model has a bias of its own: dynamic,
    weight-only and float linears built without one drop it, and the model would silently change.
    Which linears follow a smoothed norm, and whether they have a bias, depends on the model: the
    worker refuses those cases before any compute; here, a warning names the entries at risk."""
    if proc.symmetric or "norm-linear" not in proc.enable_subgraph_type:
        return []
    others = [(path, lq) for path, lq in config.linear_quants() if not _static(lq)]
    if not others:
        return []
    path, lq = others[0]
    return [Problem(f"{prefix}spec.process[{index}].symmetric",
                    f"false adds W*shift as a bias to the linears after each smoothed norm; vllm-ascend keeps it "
                    f"only for W8A8 static (in quant_bias) or where the model has a bias of its own, and {path} "
                    f"({_scheme(lq)}) would drop it: the worker refuses the run before any compute if such a "
                    "linear follows a smoothed norm (use symmetric: true, or static per_tensor activations)",
                    "warning")]
