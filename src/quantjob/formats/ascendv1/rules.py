"""Load rules of the ascendv1 format: schemes vllm-ascend has no loader for (``quantjob.api.rules_output``
applies them to every saver writing ascendv1; the sources are cited in its docstring)."""

from __future__ import annotations

from typing import Any

from quantjob.api.modelslim import LinearQuant, ModelslimConfig
from quantjob.api.problems import Problem
from quantjob.api.rules_moe import EXPERTS


def load_problems(config: ModelslimConfig, entries: list[tuple[str, LinearQuant]], saver_at: str,
                  model_config: dict[str, Any] | None, prefix: str) -> list[Problem]:
    """What vllm-ascend cannot load among the linear_quant ``entries`` of a saver writing ascendv1."""
    from quantjob.api.rules_output import model_dtype

    problems: list[Problem] = []
    dtype = model_dtype(model_config)
    for path, lq in entries:
        at = f"{prefix}{path}.qconfig"
        weight, act = lq.qconfig.weight, lq.qconfig.act
        if act is None and weight.dtype == "int4":
            problems.append(Problem(f"{at}.weight.dtype", f"int4 weights (W4A16) with {saver_at}: vllm-ascend has no "
                                                          "dense W4A16 linear scheme (only MoE experts, in "
                                                          "compressed-tensors' packed layout); fix: use type: "
                                                          f"compressed_tensors_saver in {saver_at} (vLLM, "
                                                          "transformers), or int8 weights"))
        elif act is None and weight.scope == "per_group":
            problems.append(Problem(f"{at}.weight.scope", f"per_group W8A16 with {saver_at}: vllm-ascend's W8A16 "
                                                          "loads per-channel scales [out, 1] only; fix: use scope "
                                                          "per_channel, or type: compressed_tensors_saver in "
                                                          f"{saver_at}"))
        if act is not None and act.scope == "per_tensor" and dtype == "float32":
            problems.append(Problem(f"{at}.act.scope", f"static W8A8 of a float32 model with {saver_at}: vllm-ascend "
                                                       "creates deq_scale only for bfloat16 and float16 models, so "
                                                       "the output does not load; fix: convert the model to bfloat16 "
                                                       "(or float16) first, or use scope per_token (W8A8_DYNAMIC)"))
    return problems


def moe_expert_problem(lq: LinearQuant, path: str, name: str, prefix: str) -> tuple[str, str] | None:
    """(field, message) when vllm-ascend has no MoE scheme for what ``lq`` gives expert ``name``."""
    act = lq.qconfig.act
    at = f"{prefix}{path}.qconfig"
    static = act is not None and act.scope != "per_token"
    if lq.qconfig.weight.dtype == "int8" and (act is None or static):
        kind = "static W8A8" if static else "W8A16"
        return (f"{at}.act.scope" if static else f"{at}.act",
                (f"{name} (a routed expert) would be {kind}; vllm-ascend's only int8 MoE scheme is W8A8_DYNAMIC "
                f"(its registry has no ({'W8A8' if static else 'W8A16'}, moe) entry); fix: quantize the experts "
                "with act scope per_token in an entry of their own placed before this one (as in "
                "examples/configs/qwen3-30b-a3b-w8a8-mixed.yaml: attention static W8A8, '*mlp.experts*' "
                f"W8A8_DYNAMIC, router float), or exclude '*{EXPERTS}.*' from {path}"))
    return None
