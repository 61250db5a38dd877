"""Calibration samples: read a jsonl or plain-text file (or the shipped default set), tokenize
with the model's own tokenizer, truncate, and keep file order (nothing is ever sorted, so global
sample i is the same sample on every rank).

- jsonl: one object per line with ``"text"`` (a string) or ``"input_ids"`` (a list of ints);
- plain text: one sample per paragraph when the file has blank lines, else one per line;
- no file: ``quantjob/worker/data/corpus.txt`` (English paragraphs written for this project).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from quantjob.worker.errors import QuantJobError

DEFAULT_NAME = "data/corpus.txt"
_FIX = "give a jsonl file of {\"text\": ...} or {\"input_ids\": [...]} lines, or a plain text file"


@dataclass
class Calibration:
    """Token ids of every global sample (1-D int64 tensors, file order) and their digest."""

    samples: list[torch.Tensor]
    source: str
    digest: str


@dataclass
class _Raw:
    text: str | None = None
    ids: list[int] | None = None


def _parse_jsonl(text: str, source: str) -> list[_Raw]:
    raws: list[_Raw] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item: Any = json.loads(line)
        except json.JSONDecodeError as error:
            raise QuantJobError(f"{source}:{number}: not valid JSON ({error.msg}); {_FIX}") from error
        if not isinstance(item, dict):
            raise QuantJobError(f"{source}:{number}: expected a JSON object; {_FIX}")
        if "input_ids" in item:
            ids = item["input_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise QuantJobError(f"{source}:{number}: input_ids must be a list of integers")
            raws.append(_Raw(ids=ids))
        elif isinstance(item.get("text"), str):
            raws.append(_Raw(text=item["text"]))
        else:
            raise QuantJobError(f"{source}:{number}: no \"text\" string or \"input_ids\" list; {_FIX}")
    return raws


def _parse_text(text: str) -> list[_Raw]:
    lines = text.splitlines()
    if any(not line.strip() for line in lines[:-1]) and any(line.strip() for line in lines):
        blocks, current = [], []  # paragraphs separated by blank lines
        for line in lines + [""]:
            if line.strip():
                current.append(line.strip())
            elif current:
                blocks.append(" ".join(current))
                current = []
        return [_Raw(text=block) for block in blocks]
    return [_Raw(text=line.strip()) for line in lines if line.strip()]


def _read(path: Path | None) -> tuple[bytes, str]:
    if path is None:
        data = resources.files("quantjob.worker").joinpath(DEFAULT_NAME).read_bytes()
        return data, f"<built-in {DEFAULT_NAME}>"
    if os.path.isdir(path):
        raise QuantJobError(f"calibration file {path} is a directory; fix: pass one jsonl or text file (a file "
                            "inside it) with --calib_file, or omit it to use the built-in calibration set")
    if not os.path.isfile(path):
        raise QuantJobError(f"calibration file {path} does not exist; fix --calib_file or omit it to use the "
                            "built-in calibration set")
    try:
        return path.read_bytes(), str(path)
    except OSError as error:
        raise QuantJobError(f"calibration file {path}: cannot read ({error.strerror}); "
                            "check its permissions") from error


def _tokenizer(model_dir: Path, trust_remote_code: bool) -> Any:
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise QuantJobError(f"{model_dir}: cannot load the tokenizer ({str(error).splitlines()[0]}); add the "
                            "tokenizer files to the model directory, or give a calibration jsonl with "
                            "\"input_ids\"") from error


def load_calibration(path: Path | None, model_dir: Path, *, samples: int, max_length: int,
                     vocab_size: int | None = None, trust_remote_code: bool = False) -> Calibration:
    """The first ``samples`` usable samples, tokenized and truncated to ``max_length`` tokens."""
    data, source = _read(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise QuantJobError(f"calibration file {source} is not UTF-8 text; {_FIX}") from error
    is_jsonl = path is not None and path.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{")
    raws = _parse_jsonl(text, source) if is_jsonl else _parse_text(text)
    tokenizer = None
    out: list[torch.Tensor] = []
    for raw in raws:
        if len(out) >= samples:
            break
        if raw.ids is not None:
            ids = raw.ids
        else:
            if not raw.text or not raw.text.strip():
                continue
            if tokenizer is None:
                tokenizer = _tokenizer(model_dir, trust_remote_code)
            ids = list(tokenizer(raw.text)["input_ids"])
        ids = ids[:max_length]
        if not ids:
            continue
        if vocab_size is not None and (max(ids) >= vocab_size or min(ids) < 0):
            raise QuantJobError(f"calibration file {source}: sample {len(out)} has token ids outside the "
                                f"model's vocabulary (0..{vocab_size - 1}); tokenize with this model's tokenizer")
        out.append(torch.tensor(ids, dtype=torch.long))
    if not out:
        raise QuantJobError(f"calibration file {source} has no usable text (empty, or every sample is blank); {_FIX}")
    return Calibration(out, source, ids_digest(out))


def ids_digest(samples: list[torch.Tensor]) -> str:
    """sha256 of the token ids a run uses (each sample's length, then its ids): what the output
    depends on, whatever the file or the tokenizer they came from."""
    digest = hashlib.sha256()
    for ids in samples:
        digest.update(len(ids).to_bytes(8, "little"))
        digest.update(ids.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()
