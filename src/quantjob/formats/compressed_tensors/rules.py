"""Load rules of the compressed-tensors format (``quantjob.api.rules_output`` applies them to every
saver writing compressed-tensors; the sources are cited in its docstring)."""

from __future__ import annotations

from typing import Any

from quantjob.api.modelslim import IterSmooth, LinearQuant, ModelslimConfig
from quantjob.api.problems import Problem
from quantjob.api.rules_moe import EXPERTS

MOE_WARNING = ("a MoE model saved as compressed-tensors loads in vLLM, not in transformers (5.25 with "
               "compressed-tensors 0.20.1 finds no per-expert tensor to fuse into mlp.experts.gate_up_proj, "
               "even with float experts; docs/compressed-tensors-notes.md)")


def load_problems(config: ModelslimConfig, _entries: list[tuple[str, LinearQuant]], saver_at: str,
                  _model_config: dict[str, Any] | None, prefix: str) -> list[Problem]:
    """What vLLM or transformers would load wrong from a saver writing compressed-tensors."""
    problems: list[Problem] = []
    for path, lq in config.linear_quants():
        if lq.qconfig.act is None and not lq.qconfig.weight.symmetric:
            problems.append(Problem(f"{prefix}{path}.qconfig.weight.symmetric",
                                    f"asymmetric weight-only with {saver_at}: vLLM loads the packed zero points, "
                                    "transformers (compressed-tensors 0.20) cannot (its loader expects them "
                                    "unpacked: llm-compressor issue 1618); set symmetric: true to load with "
                                    "transformers too", "warning"))
    for index, proc in enumerate(config.spec.process):
        if isinstance(proc, IterSmooth) and not proc.symmetric:
            problems.append(Problem(f"{prefix}spec.process[{index}].symmetric",
                                    f"asymmetric smoothing with {saver_at}: it shifts each smoothed norm by a bias "
                                    "that transformers' and vLLM's RMSNorm have no parameter for (transformers drops "
                                    "it, vLLM refuses the checkpoint); fix: set symmetric: true, or save with "
                                    "ascendv1_saver (vllm-ascend's RMSNorm takes the bias)"))
    return problems


def moe_expert_problem(lq: LinearQuant, path: str, name: str, prefix: str) -> tuple[str, str] | None:
    """(field, message) when vLLM's compressed-tensors MoE has no scheme for expert linear ``name``."""
    act = lq.qconfig.act
    at = f"{prefix}{path}.qconfig"
    static = act is not None and act.scope != "per_token"
    if static:
        return (f"{at}.act.scope",
                (f"{name} (a routed expert) would be static W8A8; vLLM's compressed-tensors MoE loads int8 "
                "activations only dynamic per token (CompressedTensorsW8A8Int8MoEMethod); fix: act scope "
                f"per_token for the experts in an entry placed before this one, or exclude '*{EXPERTS}.*' from "
                f"{path}"))
    return None
