"""``Family``: everything quantjob knows about one model family, in one object that its module defines.

A family module (``quantjob.families.llama``, ...) defines one ``FAMILY``; ``quantjob.families``
registers each by hand. From the registered families come: the model types admission and the CLI
accept and the ``--model_type`` names they resolve (``quantjob.api.model_types``), the adapter the
worker runs (``quantjob.worker.model.adapters.adapter_for``), the fused linears the output rules judge
(``quantjob.api.rules_output.layout_for``) and the tiny models the tests and the benchmarks build
(``quantjob.worker.model.demo``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quantjob.families.adapter import Adapter


@dataclass(frozen=True)
class LayerLayout:
    """Where the decoder layers are and which of a layer's linears (relative names) an engine fuses
    into one module (vLLM's and vllm-ascend's ``packed_modules_mapping``)."""

    layers: str
    fused: tuple[tuple[str, tuple[str, ...]], ...]   # (fused module, its shards)


@dataclass(frozen=True)
class NameRule:
    """A ``--model_type`` name that starts with ``prefix`` and contains a match of the regular
    expression ``pattern`` (searched in the lowercase name) names this family; it wins over a plain
    prefix of the same length (Qwen3's MoE models are named ``Qwen3-30B-A3B``)."""

    prefix: str
    pattern: str


@dataclass(frozen=True)
class DemoShape:
    """The size of a tiny random-weight model (``quantjob.worker.model.demo.demo_config``'s
    arguments). ``experts``: (routed experts, experts per token, shared experts), set for a family
    with Mixture-of-Experts layers."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    sliding_window: int | None
    experts: tuple[int, int, int] | None


@dataclass(frozen=True)
class Demo:
    """How to make a tiny random-weight model of the family (tests, benchmarks, ``quantjob demo``).

    ``config_class``: the name of transformers' config class. ``settings(shape)``: the config keys of
    this family for a model of ``shape``, over the ones every family gets (vocabulary, sizes, layers,
    heads, token ids). ``sliding_window``: the family has sliding-window attention (a window given to
    a family without one is refused). ``random_biases``: the family has attention biases, which
    transformers initialises to zero; the demo draws them so they matter. ``mtp_layer``: the demo
    writes one multi-token-prediction layer after the decoder layers, as the family's checkpoints
    store it (transformers builds no module for it)."""

    config_class: str
    settings: Callable[[DemoShape], dict[str, Any]]
    sliding_window: bool = False
    random_biases: bool = False
    mtp_layer: bool = False


@dataclass(frozen=True)
class Family:
    """One model family.

    ``adapter``: where its parts are and how they behave (``adapter.name`` is config.json's
    ``model_type``, which also names the family as a ``--model_type``). ``layout``: the linears
    vLLM and vllm-ascend load as one module. ``demo``: its tiny test model. ``names``: other
    lowercase prefixes of msModelSlim-style ``--model_type`` names of this family
    (``qwen2`` for ``Qwen2.5-7B-Instruct``); ``name_rules``: names told apart by more than a prefix.
    ``other_architectures``: prefixes of names that start like this family's and are another
    architecture, refused (``gemma3n`` beside ``gemma3``). ``wrappers``: config.json model types of
    multimodal wrappers that hold this family's language model (refused, with the fix).
    The longest matching prefix decides a name, whichever family registered it."""

    adapter: Adapter
    layout: LayerLayout
    demo: Demo
    names: tuple[str, ...] = ()
    name_rules: tuple[NameRule, ...] = ()
    other_architectures: tuple[str, ...] = ()
    wrappers: tuple[str, ...] = ()

    @property
    def model_type(self) -> str:
        return self.adapter.name

    @property
    def moe(self) -> bool:
        """Whether the family has Mixture-of-Experts layers."""
        return self.adapter.sparse is not None
