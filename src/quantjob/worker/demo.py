"""Small random-weight models and calibration data, built here from shipped text (no downloads).

Used by ``quantjob demo``, the tests and the benchmarks. Everything is seeded: the same
arguments give the same bytes. Activation outliers are injected by scaling a few channels of
every norm that feeds linears, so the inputs of the norm-fed linears carry the large channels
that smoothing algorithms exist for (and that per-tensor activation quantization suffers from).
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # imported where used: building a config does not need it at module import
    import transformers

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text")
DEFAULT_VOCAB = 512
# Gemma3 always has sliding-window layers: a window shorter than most calibration samples, so
# the window really cuts attention (the shipped samples run from 8 to 64 words).
GEMMA3_DEMO_WINDOW = 16


def corpus_text() -> str:
    """The plain English text shipped with the package (written for this project)."""
    return resources.files("quantjob.worker").joinpath("data/corpus.txt").read_text(encoding="utf-8")


def corpus_sentences() -> list[str]:
    sentences = re.split(r"(?<=[.!?])\s+", corpus_text().replace("\n", " "))
    return [s.strip() for s in sentences if s.strip()]


@lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    return tokenizer.to_str()


def write_tokenizer(directory: Path, vocab_size: int = DEFAULT_VOCAB) -> None:
    """A byte-level BPE tokenizer trained on the shipped corpus, in Hugging Face layout."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(_trained_tokenizer_json(vocab_size), encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 4096,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def demo_config(family: str = "llama", *, num_layers: int = 2, hidden_size: int = 64,
                intermediate_size: int = 128, num_heads: int = 4, num_kv_heads: int = 2,
                vocab_size: int = DEFAULT_VOCAB, tie_word_embeddings: bool = False,
                sliding_window: int | None = None,
                dtype: torch.dtype = torch.bfloat16) -> transformers.PretrainedConfig:
    """A transformers config of one of the supported families.

    ``sliding_window``: attention window of the sliding layers. Mistral slides in every layer,
    Qwen2/Qwen3 in the upper half of the layers (``max_window_layers``), Gemma3 in every other
    layer starting with the first (``GEMMA3_DEMO_WINDOW`` when not given); Llama has none.
    """
    import transformers

    classes = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
               "qwen3": transformers.Qwen3Config, "mistral": transformers.MistralConfig,
               "gemma3_text": transformers.Gemma3TextConfig}
    if family not in classes:
        raise ValueError(f"unknown demo family {family!r}; choose one of: {', '.join(FAMILIES)}")
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers, "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 4096, "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "rms_norm_eps": 1e-6,
    }
    if family in ("qwen3", "gemma3_text"):
        kwargs["head_dim"] = hidden_size // num_heads
    if family == "llama" and sliding_window is not None:
        raise ValueError("llama has no sliding-window attention; leave sliding_window unset")
    if family == "mistral":
        kwargs["sliding_window"] = sliding_window
    if family in ("qwen2", "qwen3") and sliding_window is not None:
        kwargs.update(use_sliding_window=True, sliding_window=sliding_window, max_window_layers=num_layers // 2)
    if family == "gemma3_text":
        kwargs.update(sliding_window=sliding_window or GEMMA3_DEMO_WINDOW, query_pre_attn_scalar=hidden_size // num_heads,
                      layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)])
    config = classes[family](**kwargs)
    config.dtype = dtype
    return config


def _inject_outliers(model: torch.nn.Module, family: str, channels: int, scale: float, seed: int) -> None:
    """Spread the layer norms a little (trained norms are not all ones) and scale a few fixed
    channels of every norm that feeds linears: activation outliers after each of them. Gemma's
    norms multiply by ``1 + weight``: the multiplier is what gets spread and scaled."""
    if channels <= 0:
        return
    from quantjob.worker.adapters import ADAPTERS

    adapter = ADAPTERS[family]
    offset = adapter.norm_offset
    spread = tuple(f".{norm}.weight" for norm in adapter.input_norms + adapter.output_norms)
    outliers = tuple(f".{norm}.weight" for norm in adapter.input_norms)
    generator = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith(spread):
                continue
            multiplier = param + offset
            multiplier.mul_(1.0 + 0.2 * torch.randn(param.shape, generator=generator).to(param.dtype))
            if name.endswith(outliers):
                picked = torch.randperm(param.numel(), generator=generator)[:channels]
                multiplier[picked] *= scale
            param.copy_(multiplier - offset)


def build_demo_model(path: Path | str, *, family: str = "llama", num_layers: int = 2, hidden_size: int = 64,
                     intermediate_size: int = 128, num_heads: int = 4, num_kv_heads: int = 2,
                     dtype: torch.dtype = torch.bfloat16, seed: int = 0, outlier_channels: int = 2,
                     outlier_scale: float = 20.0, max_shard_bytes: int | None = None,
                     tie_word_embeddings: bool = False, vocab_size: int = DEFAULT_VOCAB,
                     sliding_window: int | None = None) -> Path:
    """Write a random-weight model directory (config, safetensors, tokenizer) and return its path.

    ``max_shard_bytes`` splits the weights into shards with a ``model.safetensors.index.json``.
    """
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = demo_config(family, num_layers=num_layers, hidden_size=hidden_size,
                         intermediate_size=intermediate_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
                         vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings,
                         sliding_window=sliding_window, dtype=dtype)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if family in ("qwen2",):  # Qwen2 attention biases start at zero: make them matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("proj.bias"):
                    param.normal_(0.0, 0.02)
    _inject_outliers(model, family, outlier_channels, outlier_scale, seed)
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_bytes} if max_shard_bytes else {}
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    write_tokenizer(path, vocab_size)
    return path


def calibration_texts(num_samples: int, *, seed: int = 0, min_words: int = 8, max_words: int = 64) -> list[str]:
    """``num_samples`` texts of varied length, made by joining shipped sentences in a seeded order."""
    rng = random.Random(seed)
    sentences = corpus_sentences()
    texts: list[str] = []
    for _ in range(num_samples):
        target = rng.randint(min_words, max_words)
        words: list[str] = []
        while len(words) < target:
            words.extend(rng.choice(sentences).split())
        texts.append(" ".join(words[:target]))
    return texts


def write_calibration_jsonl(path: Path | str, num_samples: int, *, seed: int = 0, min_words: int = 8,
                            max_words: int = 64) -> Path:
    """A calibration file of ``{"text": ...}`` lines built from the shipped corpus."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": text}) for text in
             calibration_texts(num_samples, seed=seed, min_words=min_words, max_words=max_words)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
