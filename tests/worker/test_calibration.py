"""Calibration: jsonl (text or input_ids), plain text, the built-in set, truncation, file order, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from quantjob.worker.errors import QuantJobError
from quantjob.worker.loop.calibration import load_calibration


@pytest.fixture
def model(tiny_model: Callable[..., Path]) -> Path:
    return tiny_model("llama", 2)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_text_and_ids_keep_file_order(model: Path, tmp_path: Path) -> None:
    lines = [{"text": "The river runs past the old mill."}, {"input_ids": [5, 6, 7]},
             {"text": "   "}, {"text": "A good bread starts with flour, water and salt."}]
    path = _write(tmp_path / "c.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    calib = load_calibration(path, model, samples=10, max_length=100)
    assert len(calib.samples) == 3  # the blank text is dropped
    assert calib.samples[1].tolist() == [5, 6, 7]
    assert len(calib.samples[0]) > 3 and len(calib.samples[0]) != len(calib.samples[2])
    assert calib.samples[0].dtype.is_floating_point is False


def test_samples_and_max_length_limits(model: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", "\n".join(json.dumps({"input_ids": list(range(1, 20 + i))})
                                                  for i in range(5)))
    calib = load_calibration(path, model, samples=2, max_length=4)
    assert [s.tolist() for s in calib.samples] == [[1, 2, 3, 4], [1, 2, 3, 4]]


def test_plain_text_lines_and_paragraphs(model: Path, tmp_path: Path) -> None:
    lines = load_calibration(_write(tmp_path / "a.txt", "one line here\nanother line\n\nthird\n"), model,
                             samples=10, max_length=100)
    assert len(lines.samples) == 2  # blank lines present: paragraphs
    per_line = load_calibration(_write(tmp_path / "b.txt", "one line here\nanother line\nthird\n"), model,
                                samples=10, max_length=100)
    assert len(per_line.samples) == 3


def test_builtin_default_set(model: Path) -> None:
    calib = load_calibration(None, model, samples=5, max_length=32)
    assert len(calib.samples) == 5 and calib.source.startswith("<built-in")
    assert all(0 < len(s) <= 32 for s in calib.samples)


@pytest.mark.parametrize(("text", "match"), [
    ("", "no usable text"),
    ("\n  \n", "no usable text"),
    ('{"text": ""}\n', "no usable text"),
    ('{"text": "ok"}\n{oops\n', r"c\.jsonl:2: not valid JSON"),
    ('{"prompt": "x"}\n', r"c\.jsonl:1: no \"text\""),
    ('{"input_ids": [1, "a"]}\n', "list of integers"),
    ('{"input_ids": [1, 99999]}\n', "outside the model's vocabulary"),
])
def test_bad_files_name_the_file(model: Path, tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path / "c.jsonl", text)
    with pytest.raises(QuantJobError, match=match) as info:
        load_calibration(path, model, samples=4, max_length=16, vocab_size=512)
    assert str(path) in str(info.value)


def test_missing_file(model: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantJobError, match="does not exist"):
        load_calibration(tmp_path / "nope.jsonl", model, samples=1, max_length=8)


def test_digest_follows_the_token_ids(model: Path, tmp_path: Path) -> None:
    a = load_calibration(_write(tmp_path / "a.txt", "alpha beta\n"), model, samples=1, max_length=8)
    b = load_calibration(_write(tmp_path / "b.txt", "alpha gamma\n"), model, samples=1, max_length=8)
    assert a.digest != b.digest
