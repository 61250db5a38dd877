"""Model families, one module each (``quantjob.families.llama``, ...), every one registered below.

A family module defines one ``Family`` (``quantjob.families.family``): its adapter (parts, behaviour,
smoothing sites), its ``--model_type`` names, the linears engines fuse, its tiny test model. The name
tables admission reads (``quantjob.api.model_types``), the worker's adapters, the output rules'
layouts and the demo's family list are read from this registry.

Torch-free: ``quantjob.api`` imports it. Adding a family: its module and one line below.
"""

from __future__ import annotations

from quantjob.families import deepseek_v3, gemma3, glm4_moe, llama, mistral, qwen2, qwen3, qwen3_moe
from quantjob.families.family import Demo, DemoShape, Family, LayerLayout, NameRule
from quantjob.families.registry import (
                                        families,
                                        family_for_name,
                                        family_named,
                                        layout_of,
                                        model_types,
                                        register,
                                        registered,
                                        unregister,
                                        wrapped_text_model,
)

register(llama.FAMILY)
register(qwen2.FAMILY)
register(qwen3.FAMILY)
register(mistral.FAMILY)
register(gemma3.FAMILY)
register(qwen3_moe.FAMILY)
register(deepseek_v3.FAMILY)
register(glm4_moe.FAMILY)

__all__ = ["Demo", "DemoShape", "Family", "LayerLayout", "NameRule", "families", "family_for_name", "family_named",
           "layout_of", "model_types", "register", "registered", "unregister", "wrapped_text_model"]
