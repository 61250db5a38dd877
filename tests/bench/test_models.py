"""Cached benchmark models and calibration files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.models import (
    ModelShape,
    calibration_file,
    check_embedding_rows,
    model_dir,
    read_calibration_ids,
    weights_bytes,
)


def test_calibration_is_seeded_exact_length_and_prefix_stable(tmp_path: Path) -> None:
    small = read_calibration_ids(calibration_file(3, 16, 100, cache=tmp_path))
    large = read_calibration_ids(calibration_file(5, 16, 100, cache=tmp_path))
    assert [len(ids) for ids in large] == [16] * 5
    assert large[:3] == small  # growing the sample count keeps the first samples
    assert all(4 <= i < 100 for ids in large for i in ids)
    assert read_calibration_ids(calibration_file(3, 16, 100, cache=tmp_path, seed=1)) != small


def test_calibration_rejects_a_vocab_of_special_tokens_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab 4"):
        calibration_file(1, 8, 4, cache=tmp_path)


def test_model_keeps_a_vocabulary_larger_than_its_tokenizer(tmp_path: Path) -> None:
    # the demo tokenizer cannot learn 32000 tokens from the shipped corpus; the embedding must still have them
    shape = ModelShape(layers=1, hidden=32, intermediate=64, vocab=32000, heads=2, kv_heads=2)
    built = model_dir(shape, tmp_path)
    assert built.name == shape.key and weights_bytes(built) > 2 * 32000 * 32 * 2  # embedding + lm_head, bf16
    assert model_dir(shape, tmp_path) == built  # cached: not rebuilt
    assert not list(built.parent.glob("*.building"))
    config = json.loads((built / "config.json").read_text())
    config["vocab_size"] = 1000
    (built / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="vocab_size is 1000"):
        check_embedding_rows(built, 32000)
