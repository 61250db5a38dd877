"""Rules about outputs that load: what each saver's format and its inference engine accept.

Called from ``quantjob.api.check.resolve`` (so the CLI, the webhook and the worker all say it
before any work); no weights are needed. The rules that need the model's config.json (its dtype,
its number of layers, its family) apply where it is known: ``quantjob quantize`` and the
worker's preflight; the webhook judges without it. Sources (vllm-ascend, vLLM, compressed-tensors)
are cited in ``docs/ascend-format-notes.md`` and ``docs/compressed-tensors-notes.md``.

- fused modules: vllm-ascend and vLLM load q/k/v (and gate/up) as one module and refuse shards
  quantized differently (or some float, some not). The check matches ``include``/``exclude`` against
  the fused linears' names of every decoder layer (``layout_for``: each family module's ``layout``)
  without any weight;
- ascendv1 (vllm-ascend): no dense W4A16 linear scheme, W8A16 only per channel, no static W8A8 in
  a float32 model;
- W8A8 (both formats): per-channel, symmetric weights;
- compressed-tensors (transformers, vLLM): no asymmetric smoothing (a norm bias neither loads);
- Mixture-of-Experts layers (``quantjob.api.rules_moe``, config.json known): the router stays float,
  every expert of a layer gets one scheme, and only schemes the engines have for MoE (ascendv1:
  W8A8_DYNAMIC; vLLM: no static W8A8);
- several savers: each writes its own sub-directory of the output (``saver_directories``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from quantjob.api import catalogue
from quantjob.api.globs import matches, pattern_error
from quantjob.api.modelslim import LinearQuant, ModelslimConfig, Saver
from quantjob.api.problems import Problem
from quantjob.families import LayerLayout, layout_of
from quantjob.formats import format_named

LAYERS_WITHOUT_CONFIG = 128      # layer indices judged when the model's config is not known
_MAX_EXPANSIONS = 4096           # brace expansions per pattern the fused-shard rule is willing to match


def saver_format(saver: Saver) -> str | None:
    entry = catalogue.lookup("saver", saver.type)
    return entry.format if entry is not None else None


def saver_directories(savers: Sequence[Saver]) -> list[str]:
    """Where each saver writes, relative to the job's output: "" (the output itself) for a single
    saver; with several, its ``save_directory`` or else its format's name (``ascendv1``,
    ``compressed_tensors``)."""
    if len(savers) == 1:
        return [""]
    return [str(PurePosixPath(saver.save_directory)) if saver.save_directory not in (None, "", ".")
            else (saver_format(saver) or saver.type) for saver in savers]


def _directory_error(value: str) -> str | None:
    path = PurePosixPath(value)
    if path.is_absolute():
        return "is absolute"
    if any(part in ("..", ".") or part.startswith(".") for part in value.split("/") if part):
        return "has a '..' or hidden component"
    if "\\" in value or "\0" in value or any(len(part.encode()) > 255 for part in path.parts):
        return "is not a plain relative directory name"
    return None


def saver_directory_problems(savers: Sequence[Saver], prefix: str) -> list[Problem]:
    """With several savers: each needs its own, plain sub-directory; a warning says the layout."""
    if len(savers) < 2:
        return []
    problems: list[Problem] = []
    directories = saver_directories(savers)
    seen: dict[str, int] = {}
    for index, (saver, directory) in enumerate(zip(savers, directories)):
        at = f"{prefix}save[{index}].save_directory"
        error = _directory_error(saver.save_directory) if saver.save_directory not in (None, "", ".") else None
        if error:
            problems.append(Problem(at, f"{saver.save_directory!r} {error}; with several savers it names the "
                                        "sub-directory of the output this saver writes: use a plain relative "
                                        "name such as 'compressed-tensors'"))
            continue
        if directory in seen:
            problems.append(Problem(at, f"spec.save[{seen[directory]}] and spec.save[{index}] would both write "
                                        f"{directory}/ of the output; give each a distinct save_directory"))
        seen.setdefault(directory, index)
    if not problems:
        layout = ", ".join(f"{directory}/ (spec.save[{i}] {saver.type})"
                           for i, (saver, directory) in enumerate(zip(savers, directories)))
        problems.append(Problem(f"{prefix}save", f"{len(savers)} savers: each writes its own sub-directory of the "
                                                 f"output: {layout}", "warning"))
    return problems


# --- model facts from config.json ---------------------------------------------------------------------------

def _text_config(model_config: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(model_config, dict):
        return {}
    text = model_config.get("text_config")
    return {**text, **model_config} if isinstance(text, dict) else model_config


def model_dtype(model_config: dict[str, Any] | None) -> str | None:
    """The model's float dtype as config.json names it (``dtype``, or the older ``torch_dtype``)."""
    config = _text_config(model_config)
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value).removeprefix("torch.") if value else None


def _layer_count(model_config: dict[str, Any] | None) -> int:
    value = _text_config(model_config).get("num_hidden_layers")
    return value if isinstance(value, int) and 0 < value <= 100_000 else LAYERS_WITHOUT_CONFIG


def layout_for(model_config: dict[str, Any] | None) -> LayerLayout:
    """The fused linears of the model's family (``Family.layout``); a Llama-style layer when the
    family is not known."""
    return layout_of(_text_config(model_config).get("model_type"))


# --- schemes ------------------------------------------------------------------------------------------------

def scheme_type(lq: LinearQuant) -> str:
    """The ascendv1 description type a linear_quant entry writes."""
    act, weight = lq.qconfig.act, lq.qconfig.weight
    if act is None:
        return "W4A16" if weight.bits == 4 else "W8A16"
    return "W8A8_DYNAMIC" if act.scope == "per_token" else "W8A8"


def scheme_key(lq: LinearQuant | None) -> str:
    """Everything a loader needs equal across fused shards: the type and the exact quantization."""
    if lq is None:
        return "FLOAT"
    weight, act = lq.qconfig.weight, lq.qconfig.act
    parts = {"weight": [weight.dtype, weight.scope, weight.group_size, weight.symmetric],
             "act": [act.scope, act.symmetric] if act is not None and act.scope != "per_token"
             else ["per_token"] if act is not None else None}
    return f"{scheme_type(lq)} {json.dumps(parts)}"


def _scheme_text(lq: LinearQuant | None) -> str:
    if lq is None:
        return "FLOAT"
    weight = lq.qconfig.weight
    detail = f"{weight.scope}{f' {weight.group_size}' if weight.group_size else ''}"
    detail += "" if weight.symmetric else " asymmetric"
    return f"{scheme_type(lq)} ({detail})"


def _expansions(pattern: str) -> int:
    """How many patterns brace expansion gives at most (linear time: nothing is expanded)."""
    stack: list[tuple[list[int], int]] = []   # enclosing groups: (finished alternatives, current product)
    alternatives: list[int] = []
    product = 1
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "[":
            close = pattern.find("]", index + 2)
            index = close + 1 if close > 0 else len(pattern)
            continue
        if char == "{":
            stack.append((alternatives, product))
            alternatives, product = [], 1
        elif char == "," and stack:
            alternatives.append(product)
            product = 1
        elif char == "}" and stack:
            alternatives.append(product)
            count = sum(alternatives)
            alternatives, product = stack.pop()
            product = min(product * count, 1 << 62)
        index += 1
    return product


def _judgeable(lq: LinearQuant) -> bool:
    return all(pattern_error(p) is None and _expansions(p) <= _MAX_EXPANSIONS for p in (*lq.include, *lq.exclude))


# --- the rules ----------------------------------------------------------------------------------------------

def _fused_problems(entries: list[tuple[str, LinearQuant]], model_config: dict[str, Any] | None,
                    prefix: str, exact: bool) -> list[Problem]:
    """Shards of one fused module must get one scheme (``exact``: the whole quantization, for
    vLLM/compressed-tensors; else the description type, for vllm-ascend). One problem per field
    that splits a module, naming the first layer and how many more."""
    if not all(_judgeable(lq) for _, lq in entries):
        return []   # the pattern's own problem is reported by the check; nothing is expanded here
    layout = layout_for(model_config)
    count = _layer_count(model_config)
    # A pattern without a digit, '?' or '[' cannot tell one layer index from another (only a '*'
    # can match the index's digits): then layer 0 stands for every layer.
    alike = not any(char.isdigit() or char in "?[" for _, lq in entries for p in (*lq.include, *lq.exclude)
                    for char in p)
    found: dict[str, tuple[str, list[int]]] = {}   # field -> (message of its first layer, layers)
    for layer in range(1 if alike else count):
        base = f"{layout.layers}.{layer}."
        for fused, shards in layout.fused:
            chosen: list[tuple[str, str, LinearQuant | None]] = []
            for shard in shards:
                path, lq = next(((path, lq) for path, lq in entries if matches(base + shard, lq.include, lq.exclude)),
                                ("", None))
                chosen.append((shard, path, lq))
            keys = {scheme_key(lq) if exact else (scheme_type(lq) if lq else "FLOAT") for _, _, lq in chosen}
            if len(keys) == 1:
                continue
            at = f"{prefix}{_blame(base, chosen)}"
            if at not in found:
                short = [shard.split(".")[-1] for shard in shards]
                parts = "; ".join(f"{shard.split('.')[-1]} {_scheme_text(lq)}" + (f" by {path}" if path else "")
                                  for shard, path, lq in chosen)
                message = (f"{parts}. vllm-ascend and vLLM load {', '.join(short)} as one module "
                           f"({fused.split('.')[-1]}) and refuse shards that are not quantized alike; fix: quantize "
                           f"all of them the same way, or keep all of them float (e.g. exclude {_float_all(shards)})")
                found[at] = (message, [])
            found[at][1].append(layer)
    problems: list[Problem] = []
    known = _text_config(model_config).get("num_hidden_layers") is not None
    for at, (message, layers) in found.items():
        others = count - 1 if alike else len(layers) - 1
        more = "" if others == 0 else f" (and {others} more)" if known else " (and every layer alike)"
        problems.append(Problem(at, f"layer {layers[0]}{more}: {message}"))
    return problems


def _float_all(shards: tuple[str, ...]) -> str:
    """A pattern that keeps every shard float: ``'*.self_attn.{q_proj,k_proj,v_proj}'``; for a layer's
    routed experts (read from expert 0's shards), every expert: ``'*.mlp.experts.*'``."""
    parent = shards[0].rpartition(".")[0]
    if parent.startswith("mlp.experts."):
        return "'*.mlp.experts.*'"
    return f"'*.{parent}.{{{','.join(shard.rpartition('.')[2] for shard in shards)}}}'"


def _blame(base: str, chosen: list[tuple[str, str, LinearQuant | None]]) -> str:
    """The field that splits the fused module: the exclude (or include) of the entry that quantizes
    some shards but not a float one, or the include of the second entry that claims a shard."""
    quantizing = [(path, lq) for _, path, lq in chosen if lq is not None]
    first_path, first = quantizing[0]
    for shard, _, lq in chosen:
        if lq is None:
            return f"{first_path}.exclude" if matches(base + shard, first.include) else f"{first_path}.include"
    other = next(path for path, _ in quantizing if path != first_path)
    return f"{other}.include"


def _scheme_problems(entries: list[tuple[str, LinearQuant]], prefix: str) -> list[Problem]:
    problems: list[Problem] = []
    for path, lq in entries:
        at = f"{prefix}{path}.qconfig"
        weight, act = lq.qconfig.weight, lq.qconfig.act
        if act is None or weight.dtype != "int8":
            continue
        if weight.scope == "per_group":
            problems.append(Problem(f"{at}.weight.scope", "W8A8 needs per_channel weights: vllm-ascend's W8A8 loads "
                                                          "weight_scale [out, 1] and vLLM's int8 W8A8 a channel or "
                                                          "tensor scale; use scope per_channel (per_group is for "
                                                          "weight-only W8A16/W4A16)"))
        if not weight.symmetric:
            problems.append(Problem(f"{at}.weight.symmetric", "W8A8 needs symmetric weights: vllm-ascend's "
                                                              "npu_quant_matmul applies no weight offset and vLLM's "
                                                              "int8 W8A8 takes symmetric weights only; set "
                                                              "symmetric: true"))
    return problems


def output_problems(config: ModelslimConfig, model_config: dict[str, Any] | None = None,
                    prefix: str = "spec.config.") -> list[Problem]:
    """Everything that would make an output fail to load, per saver, before any work."""
    savers = config.spec.save
    problems = saver_directory_problems(savers, f"{prefix}spec.")
    entries = config.linear_quants()
    problems += _scheme_problems(entries, prefix)
    formats = [saver_format(saver) for saver in savers]
    if entries and any(fmt is not None for fmt in formats):
        problems += _fused_problems(entries, model_config, prefix, exact=any(fmt is not None and format_named(fmt).exact_fused
                                                                    for fmt in formats))
        problems += _moe_problems(entries, model_config, formats, prefix)
    for index, fmt in enumerate(formats):
        if fmt is not None:
            problems += format_named(fmt).load_problems(config, entries, f"spec.save[{index}]", model_config, prefix)
    return _unique(problems)


def _moe_problems(entries: list[tuple[str, LinearQuant]], model_config: dict[str, Any] | None,
                  formats: list[str | None], prefix: str) -> list[Problem]:
    """The MoE rules (``quantjob.api.rules_moe``), where config.json says the model has routed experts."""
    from quantjob.api.rules_moe import moe_layout, moe_problems  # it builds on this module's scheme helpers

    config = _text_config(model_config)
    if not config or not all(_judgeable(lq) for _, lq in entries):
        return []
    layers = layout_for(model_config)
    layout = moe_layout(config, layers.layers, _layer_count(model_config))
    expert0_fused = any(fused == "mlp.experts" for fused, _ in layers.fused)
    return moe_problems(entries, layout, formats, prefix, expert0_fused) if layout is not None else []


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    unique: list[Problem] = []
    for problem in problems:
        if (problem.path, problem.message) not in seen:
            seen.add((problem.path, problem.message))
            unique.append(problem)
    return unique
