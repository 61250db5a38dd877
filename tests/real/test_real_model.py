"""Gemma3-270M (converted from the shipped GGUF) and Shakespeare: the conversion, the calibration
and evaluation texts, quantjob on the real checkpoint, and the float model's perplexity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import real_model
from quantjob.cli import main
from quantjob.worker.model.checkpoint import Checkpoint
from quantjob.worker.readers.perplexity import PerplexityResult, perplexity

pytestmark = [pytest.mark.real_model, pytest.mark.slow, pytest.mark.timeout(1800)]

EVAL_TOKENS = 1024


def test_conversion_gives_a_plain_bf16_gemma3_directory(gemma: Path) -> None:
    config = json.loads((gemma / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    assert config["num_hidden_layers"] == 18 and config["hidden_size"] == 640 and config["tie_word_embeddings"]
    tensors = Checkpoint(gemma).tensors
    assert {info.dtype for info in tensors.values()} == {"BF16"}
    assert tensors["model.embed_tokens.weight"].shape == (config["vocab_size"], 640)
    assert "lm_head.weight" not in tensors  # tied: the embedding serves as the head
    norms = Checkpoint(gemma).load(["model.layers.0.input_layernorm.weight"], torch.device("cpu"))
    assert float(norms["model.layers.0.input_layernorm.weight"].float().std()) > 0  # trained, not the init


def test_calibration_is_512_token_samples_without_the_held_out_play(gemma: Path, real_cache: Path) -> None:
    plays = real_model.calibration_plays()
    assert plays and not any(p.name.startswith(real_model.HELD_OUT) for p in plays)
    assert real_model.eval_text().is_file()
    lines = real_model.calibration_file(gemma, 64, 512, real_cache).read_text().splitlines()
    samples = [json.loads(line)["input_ids"] for line in lines]
    vocab = json.loads((gemma / "config.json").read_text())["vocab_size"]
    assert len(samples) == 64 and {len(s) for s in samples} == {512}
    assert {s[0] for s in samples} == {2}  # Gemma's BOS
    assert all(0 <= i < vocab for s in samples for i in s)
    assert len({tuple(s) for s in samples}) == 64


@pytest.fixture(scope="module")
def float_perplexity(gemma: Path) -> PerplexityResult:
    """The float model on the held-out play: computed once, checked below and compared against."""
    return perplexity(gemma, real_model.eval_text(), max_length=512, max_tokens=EVAL_TOKENS)


def test_float_perplexity_on_the_held_out_play_is_sane(float_perplexity: PerplexityResult) -> None:
    result = float_perplexity
    assert result.tokens == EVAL_TOKENS
    # a trained 270M model on Shakespeare: tens, far from the vocabulary size (262144) of a broken one
    assert 10 < result.perplexity < 150, result.perplexity


def test_quantjob_quantizes_the_real_checkpoint_and_it_scores_close_to_float(
        gemma: Path, real_cache: Path, tmp_path: Path, float_perplexity: PerplexityResult) -> None:
    calib = real_model.calibration_file(gemma, 64, 512, real_cache)
    out = tmp_path / "w8a8-dynamic"
    argv = ["quantize", "--model_path", str(gemma), "--save_path", str(out), "--device", "cpu",
            "--quant_type", "w8a8_dynamic", "--calib_file", str(calib), "--calib_samples", "4", "--max_length", "64"]
    assert main(argv) == 0
    description = json.loads((out / "quant_model_description.json").read_text())
    assert description["model_quant_type"] == "W8A8_DYNAMIC"
    assert description["model.layers.17.mlp.down_proj.weight"] == "W8A8_DYNAMIC"
    text = real_model.eval_text()
    base = float_perplexity
    quantized = perplexity(out, text, max_length=512, max_tokens=EVAL_TOKENS)
    assert quantized.kind == "ascendv1"
    assert quantized.perplexity != base.perplexity
    assert abs(quantized.perplexity / base.perplexity - 1) < 0.05, (base.perplexity, quantized.perplexity)
