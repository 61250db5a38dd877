"""Output rules for Mixture-of-Experts layers: which expert schemes the engines load, and the router.

Called by ``quantjob.api.rules_output.output_problems`` when the model's config.json is known and
describes routed experts (``quantjob quantize``, the worker's preflight); the webhook cannot tell a
MoE model from a dense one and judges without them. Sources, read at the commits cited in
``docs/ascend-format-notes.md`` and ``docs/compressed-tensors-notes.md``:

- vllm-ascend (``quantization/modelslim_config.py``): a MoE layer's scheme is the description tag of
  ``experts.0.{gate,up,down}_proj.weight`` (``packed_modules_model_mapping["experts"]``), the three
  must agree, and its registry (``methods/registry.py``) has one int8 MoE scheme,
  ``("W8A8_DYNAMIC", "moe")`` (``methods/w8a8_dynamic.py``): no static W8A8 and no W8A16 MoE;
- vLLM (``compressed_tensors/compressed_tensors_moe/compressed_tensors_moe.py`` ``get_moe_method``):
  the scheme of ``experts.0``'s three projections (they must be equal) applies to every expert; int8
  activations only dynamic per token with channel weights (``CompressedTensorsW8A8Int8MoEMethod``),
  weight-only 4 or 8 bits per channel or group (pack-quantized, WNA16);
- both load the router (``mlp.gate``) unquantized; quantjob keeps it float (it is not a linear the
  loop quantizes), so an ``include`` that names it asks for what cannot be given and is refused;
  wildcards that only happen to match it (``*``) pass.

Every expert of a layer gets one scheme: the engines take expert 0's and load every expert with it.
Layer and expert indices are judged as the fused-shard rule judges layers: patterns without a digit,
``?`` or ``[`` cannot tell them apart, so the first sparse layer's expert 0 stands for all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from quantjob.api.globs import expand_braces, matches
from quantjob.api.modelslim import LinearQuant
from quantjob.api.problems import Problem

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ROUTER = "mlp.gate"
EXPERTS = "mlp.experts"
MAX_EXPERTS = 4096          # a config claiming more is judged on the first MAX_EXPERTS


@dataclass(frozen=True)
class MoeLayout:
    """Where a model's routed experts are: the sparse decoder layers and the experts per layer."""

    layers: str                      # "model.layers"
    sparse: tuple[int, ...]          # decoder layers with routed experts
    experts: int                     # routed experts per sparse layer

    def expert(self, layer: int, expert: int, projection: str) -> str:
        return f"{self.layers}.{layer}.{EXPERTS}.{expert}.{projection}"

    def router(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{ROUTER}"


def _int(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def moe_layout(config: dict[str, Any], layers: str, count: int) -> MoeLayout | None:
    """The routed experts ``config`` (config.json, text part) describes, or None for a dense model.

    DeepSeek-V3 / Kimi-K2 / GLM-4.5 (``n_routed_experts``): layers from ``first_k_dense_replace`` on,
    every ``moe_layer_freq``-th; Qwen3-MoE (``num_experts`` on the hub, ``num_local_experts`` as
    transformers 5 writes it): layers not in ``mlp_only_layers`` whose
    ``(index + 1)`` is a multiple of ``decoder_sparse_step`` (transformers' modeling files).
    """
    experts = (_int(config, "n_routed_experts", 0) or _int(config, "num_experts", 0)
               or _int(config, "num_local_experts", 0))
    if experts <= 0:
        return None
    if "n_routed_experts" in config:
        first = _int(config, "first_k_dense_replace", 0)
        every = max(1, _int(config, "moe_layer_freq", 1))
        sparse = [i for i in range(count) if i >= first and i % every == 0]
    else:
        dense = config.get("mlp_only_layers") or []
        step = max(1, _int(config, "decoder_sparse_step", 1))
        sparse = [i for i in range(count) if i not in dense and (i + 1) % step == 0]
    return MoeLayout(layers, tuple(sparse), min(experts, MAX_EXPERTS)) if sparse else None


def _first(entries: list[tuple[str, LinearQuant]], name: str) -> tuple[str, LinearQuant | None]:
    return next(((path, lq) for path, lq in entries if matches(name, lq.include, lq.exclude)), ("", None))


def _names_router(patterns: list[str], router: str) -> bool:
    """Whether a pattern names the router in its text (``mlp.gate`` not followed by ``_``) and matches
    it; wildcards that only happen to match it (``*``, ``*mlp*``) select nothing there, as the router is
    not a linear quantjob quantizes."""
    return any(re.search(r"mlp\.gate(?!_)", expanded) and fnmatchcase(router, expanded)
               for pattern in patterns for expanded in expand_braces(pattern))


def _distinguishes(entries: list[tuple[str, LinearQuant]]) -> bool:
    """Whether some pattern can tell one layer or expert index from another."""
    return any(char.isdigit() or char in "?[" for _, lq in entries for p in (*lq.include, *lq.exclude)
               for char in p)


def moe_problems(entries: list[tuple[str, LinearQuant]], layout: MoeLayout, formats: list[str | None],
                 prefix: str, expert0_fused: bool = False) -> list[Problem]:
    """The MoE rules for the savers' ``formats`` (each format's own in its package's ``rules.py``).
    ``expert0_fused``: the family's layout already judges expert 0's gate/up/down as one fused module
    (its family's ``layout``, ``rules_output.layout_for``), so a split inside expert 0 is left to that rule (one problem, not two)."""
    from quantjob.api.rules_output import _blame, _scheme_text, scheme_key, scheme_type
    from quantjob.formats import format_named

    exact = any(fmt is not None and format_named(fmt).exact_fused for fmt in formats)
    every = _distinguishes(entries)
    layers = layout.sparse if every else layout.sparse[:1]
    experts = range(layout.experts) if every else range(1)
    found: dict[str, tuple[str, list[int]]] = {}   # field -> (message of its first layer, layers)

    def report(at: str, layer: int, message: str) -> None:
        seen = found.setdefault(at, (message, []))[1]
        if not seen or seen[-1] != layer:
            seen.append(layer)

    def key(lq: LinearQuant | None) -> str:
        return scheme_key(lq) if exact else (scheme_type(lq) if lq else "FLOAT")

    for layer in layers:
        router = layout.router(layer)
        for entry_path, entry in entries:
            if matches(router, entry.include, entry.exclude) and _names_router(entry.include, router):
                report(f"{prefix}{entry_path}.include", layer,
                       f"{router} (the router) is named for {_scheme_text(entry)}; quantjob keeps the router "
                       "float (its weight and correction bias), as vllm-ascend and vLLM load it; fix: remove it "
                       f"from {entry_path}.include (name the experts' projections instead: '*mlp.experts.*')")
        base = f"{layout.layers}.{layer}."
        chosen: list[tuple[str, str, LinearQuant | None]] = []
        for expert in experts:
            for projection in PROJECTIONS:
                name = layout.expert(layer, expert, projection)
                path, lq = _first(entries, name)
                chosen.append((name[len(base):], path, lq))
                if lq is not None:
                    problem = _scheme_problem(lq, path, name, formats, prefix)
                    if problem is not None:
                        report(problem[0], layer, problem[1])
        odd = next((item for item in chosen if key(item[2]) != key(chosen[0][2])), None)
        split0 = len({key(lq) for _, _, lq in chosen[:len(PROJECTIONS)]}) > 1
        if odd is not None and not (split0 and expert0_fused):
            described = "; ".join(f"{shard.removeprefix('mlp.')} {_scheme_text(lq)}"
                                  + (f" by {path}" if path else "") for shard, path, lq in (chosen[0], odd))
            report(f"{prefix}{_blame(base, chosen)}", layer,
                   f"{described}. vllm-ascend and vLLM take a MoE layer's scheme from experts.0's gate/up/down "
                   "and load every expert with it; fix: quantize every expert projection of a layer the same way "
                   f"(one entry that includes '*{EXPERTS}.*'), or keep all of them float (exclude "
                   f"'*{EXPERTS}.*')")
    warnings = [(index, format_named(fmt).moe_warning) for index, fmt in enumerate(formats) if fmt is not None]
    problems = [Problem(f"{prefix}spec.save[{index}].type", warning, "warning")
                for index, warning in warnings if warning is not None]
    for at, (message, seen) in found.items():
        others = len(layout.sparse) - 1 if not every else len(seen) - 1
        more = f" (and {others} more MoE layers)" if others > 0 else ""
        problems.append(Problem(at, f"layer {seen[0]}{more}: {message}"))
    return problems


def _scheme_problem(lq: LinearQuant, path: str, name: str, formats: list[str | None],
                    prefix: str) -> tuple[str, str] | None:
    """(field, message) when an engine has no MoE scheme for what ``lq`` gives expert linear ``name``
    (the first problem of the savers' formats, in registration order: ``quantjob.formats``)."""
    from quantjob.formats import formats as registered

    for fmt in registered():
        if fmt.name in formats and fmt.moe_expert_problem is not None:
            problem = fmt.moe_expert_problem(lq, path, name, prefix)
            if problem is not None:
                return problem
    return None
