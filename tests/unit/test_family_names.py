"""msModelSlim-style ``--model_type`` names resolve to the family they resolved to before the families
became one module each (the table was written from the behaviour of the name tables it replaced):
the longer prefix wins ("qwen3-moe" before "qwen3", "gemma3n" refused before "gemma3"), a Qwen3 name
with an active-parameter part (``-A3B``) is Qwen3-MoE, and a name no family claims is None."""

from __future__ import annotations

import pytest

from quantjob.api.model_types import family_for_name

RESOLVED: dict[str, str | None] = {
    "Qwen2.5-7B-Instruct": "qwen2", "Qwen2-7B": "qwen2", "Qwen2.5-14B-A3B": "qwen2", "qwen2": "qwen2",
    "Qwen3-8B": "qwen3", "qwen3": "qwen3", " Qwen3-8B ": "qwen3",
    "Qwen3-30B-A3B": "qwen3_moe", "Qwen3-235B-A22B": "qwen3_moe", "Qwen3-235B-A22B-Instruct-2507": "qwen3_moe",
    "Qwen3-Coder-480B-A35B": "qwen3_moe", "Qwen3-30B-A3.5B": "qwen3_moe", "Qwen3-MoE": "qwen3_moe",
    "qwen3-moe-15b": "qwen3_moe", "qwen3_moe": "qwen3_moe",
    "DeepSeek-V3": "deepseek_v3", "DeepSeek-V3.1": "deepseek_v3", "deepseek_v3": "deepseek_v3",
    "DeepSeek-R1": "deepseek_v3", "Kimi-K2-Instruct": "deepseek_v3", "Kimi-K2": "deepseek_v3",
    "GLM-4.5": "glm4_moe", "GLM-4.5-Air": "glm4_moe", "GLM-4.6": "glm4_moe", "GLM-4.7": "glm4_moe",
    "glm4_moe": "glm4_moe",
    "gemma-3-270m": "gemma3_text", "gemma3-1b-it": "gemma3_text", "Gemma3-1B": "gemma3_text",
    "gemma3_text": "gemma3_text", "gemma3": "gemma3_text",
    "Llama-3.1-8B": "llama", "Llama-2-7b": "llama", "llama": "llama",
    # dense checkpoints named after another family's model: their config.json's model_type decides
    "DeepSeek-R1-Distill-Qwen-7B": "qwen2", "DeepSeek-R1-Distill-Qwen-32B": "qwen2",
    "DeepSeek-R1-Distill-Llama-8B": "llama", "QwQ-32B": "qwen2", "QwQ-32B-Preview": "qwen2",
    "Mistral-7B": "mistral", "Mistral-Small-3.1": "mistral", "mistral": "mistral",
    # another architecture, or none quantjob runs
    "gemma-3n-E4B": None, "gemma3n-E2B": None, "Gemma-2-9B": None, "Mixtral-8x7B": None, "DeepSeek-V2": None,
    "GLM-4-9B": None, "GLM-5": None, "gpt2": None, "phi-3": None,
}


@pytest.mark.parametrize(("name", "family"), sorted(RESOLVED.items()))
def test_a_name_resolves_to_its_family(name: str, family: str | None) -> None:
    assert family_for_name(name) == family
