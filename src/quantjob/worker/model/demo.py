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

from quantjob.families import DemoShape, families, family_named, llama, registered

if TYPE_CHECKING:  # imported where used: building a config does not need it at module import
    import transformers

DEMO_EXPERTS = 8  # routed experts of a demo MoE model (2 per token and 1 shared, unless ``experts`` says)
DEFAULT_VOCAB = 512
DEFAULT_FAMILY = llama.FAMILY.model_type


def family_names(moe: bool | None = None) -> tuple[str, ...]:
    """The families a demo model can be built of (every registered one, ``quantjob.families``), in
    registration order; ``moe``: only those with (True) or without (False) Mixture-of-Experts layers."""
    return tuple(family.model_type for family in families() if moe is None or family.moe == moe)


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


def demo_config(family: str = DEFAULT_FAMILY, *, num_layers: int = 2, hidden_size: int = 64,
                intermediate_size: int = 128, num_heads: int = 4, num_kv_heads: int = 2,
                vocab_size: int = DEFAULT_VOCAB, tie_word_embeddings: bool = False,
                sliding_window: int | None = None, experts: tuple[int, int, int] | None = None,
                dtype: torch.dtype = torch.bfloat16) -> transformers.PretrainedConfig:
    """A transformers config of one of the supported families (its module's ``Demo``).

    ``sliding_window``: attention window of the sliding layers, for a family that has them (each
    family's demo says where: Mistral slides in every layer, Qwen2/Qwen3 in the upper half of the
    layers, Gemma3 in every other layer starting with the first, with a window of its own when none
    is given). ``experts`` (MoE families): (routed experts, experts per token, shared experts);
    default (``DEMO_EXPERTS``, 2, 1).
    """
    import transformers

    known = registered(family)
    if known is None:
        raise ValueError(f"unknown demo family {family!r}; choose one of: {', '.join(family_names())}")
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers, "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 4096, "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "rms_norm_eps": 1e-6,
    }
    if sliding_window is not None and not known.demo.sliding_window:
        raise ValueError(f"{family} has no sliding-window attention; leave sliding_window unset")
    shape = DemoShape(num_layers=num_layers, hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_heads=num_heads, num_kv_heads=num_kv_heads, sliding_window=sliding_window,
                      experts=(experts or (DEMO_EXPERTS, 2, 1)) if known.moe else None)
    kwargs.update(known.demo.settings(shape))
    config = getattr(transformers, known.demo.config_class)(**kwargs)
    config.dtype = dtype
    return config


def _inject_outliers(model: torch.nn.Module, family: str, channels: int, scale: float, seed: int) -> None:
    """Spread the layer norms a little (trained norms are not all ones) and scale a few fixed
    channels of every norm that feeds linears: activation outliers after each of them. Gemma's
    norms multiply by ``1 + weight``: the multiplier is what gets spread and scaled."""
    if channels <= 0:
        return
    adapter = family_named(family).adapter
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


def build_demo_model(path: Path | str, *, family: str = DEFAULT_FAMILY, num_layers: int = 2, hidden_size: int = 64,
                     intermediate_size: int = 128, num_heads: int = 4, num_kv_heads: int = 2,
                     dtype: torch.dtype = torch.bfloat16, seed: int = 0, outlier_channels: int = 2,
                     outlier_scale: float = 20.0, max_shard_bytes: int | None = None,
                     tie_word_embeddings: bool = False, vocab_size: int = DEFAULT_VOCAB,
                     sliding_window: int | None = None, experts: tuple[int, int, int] | None = None) -> Path:
    """Write a random-weight model directory (config, safetensors, tokenizer) and return its path.

    ``experts`` (MoE families): (routed experts, experts per token, shared experts); default
    (``DEMO_EXPERTS``, 2, 1). Each expert's width is ``intermediate_size // 4``.

    ``max_shard_bytes`` splits the weights into shards with a ``model.safetensors.index.json``.
    """
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = demo_config(family, num_layers=num_layers, hidden_size=hidden_size,
                         intermediate_size=intermediate_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
                         vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings,
                         sliding_window=sliding_window, experts=experts, dtype=dtype)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    known = family_named(family)
    if known.demo.random_biases:  # attention biases start at zero: make them matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("proj.bias"):
                    param.normal_(0.0, 0.02)
    if known.moe:
        _spread_routers(model, seed)
    _inject_outliers(model, family, outlier_channels, outlier_scale, seed)
    model = model.to(dtype)
    if getattr(model, "_keep_in_fp32_modules_strict", None):  # DeepSeek / GLM routers stay float32, as saved
        for module_name, module in model.named_modules():
            if module_name.endswith(".mlp.gate"):
                module.float()
    kwargs = {"max_shard_size": max_shard_bytes} if max_shard_bytes else {}
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    if known.demo.mtp_layer:
        _add_mtp_layer(path, config, dtype, seed)
    write_tokenizer(path, vocab_size)
    return path


def _spread_routers(model: torch.nn.Module, seed: int) -> None:
    """Routers that route: a wider router weight than the initialiser's (tokens spread over the
    experts) and a non-zero ``e_score_correction_bias`` where the family has one."""
    generator = torch.Generator().manual_seed(seed + 104729)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("mlp.gate.weight"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
            elif name.endswith("e_score_correction_bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)


def _add_mtp_layer(path: Path, config: Any, dtype: torch.dtype, seed: int) -> None:
    """A multi-token-prediction layer (DeepSeek-V3's), as the checkpoints store it: a decoder layer
    ``model.layers.{num_hidden_layers}`` (MoE) with ``enorm``, ``hnorm``, ``eh_proj`` and
    ``shared_head.norm``; config.json says ``num_nextn_predict_layers: 1``. Written into the single
    safetensors file (transformers builds no module for it)."""
    import transformers
    from safetensors.torch import load_file, save_file

    index = config.num_hidden_layers
    extended = type(config)(**{**config.to_dict(), "num_hidden_layers": index + 1})
    torch.manual_seed(seed + 1)
    mtp = transformers.AutoModelForCausalLM.from_config(extended, dtype=torch.float32).to(dtype)
    prefix = f"model.layers.{index}."
    tensors = {name: t.contiguous() for name, t in mtp.state_dict().items() if name.startswith(prefix)}
    hidden = config.hidden_size
    generator = torch.Generator().manual_seed(seed + 2)
    extra = {"enorm.weight": torch.ones(hidden), "hnorm.weight": torch.ones(hidden),
             "shared_head.norm.weight": torch.ones(hidden),
             "eh_proj.weight": torch.randn(hidden, 2 * hidden, generator=generator) * 0.02}
    tensors.update({prefix + name: t.to(dtype) for name, t in extra.items()})
    # per-expert names, as the checkpoint keeps them (the fused module's tensors split)
    fused_gate_up, fused_down = tensors.pop(prefix + "mlp.experts.gate_up_proj"), tensors.pop(prefix + "mlp.experts.down_proj")
    for e in range(fused_gate_up.shape[0]):
        gate, up = fused_gate_up[e].chunk(2, dim=0)
        tensors[f"{prefix}mlp.experts.{e}.gate_proj.weight"] = gate.contiguous()
        tensors[f"{prefix}mlp.experts.{e}.up_proj.weight"] = up.contiguous()
        tensors[f"{prefix}mlp.experts.{e}.down_proj.weight"] = fused_down[e].contiguous()
    file = path / "model.safetensors"
    save_file({**load_file(file), **tensors}, file, metadata={"format": "pt"})
    settings = json.loads((path / "config.json").read_text())
    settings["num_nextn_predict_layers"] = 1
    (path / "config.json").write_text(json.dumps(settings, indent=2) + "\n")


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
