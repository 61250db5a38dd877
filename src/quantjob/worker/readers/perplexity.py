"""Perplexity of a model directory, computed one decoder layer at a time from its files.

The evaluation text is tokenized once and cut into windows (:func:`make_windows`, the sliding
window of the Hugging Face perplexity recipe: ``max_length`` tokens per window, a new window every
``stride`` tokens, each token scored once, in the first window that has it in its last ``stride``
positions). Every window is its own sequence from position 0 (batch 1, no padding), so a window's
hidden states do not depend on the others.

The model is never loaded whole: the embedding runs for every window, then each decoder layer is
loaded once, every window goes through it, and it is dropped before the next is loaded; last the
final norm, the lm_head (or the tied embedding) and a float32 log-softmax over the vocabulary,
a few hundred positions at a time. The hidden states of all windows are kept between layers:
``windows x max_length x hidden_size x dtype bytes`` (60 windows of 512 tokens of a 640-wide bf16
model: 39 MB), plus one layer's weights and one block of logits.

Model directories (:func:`open_model`):

- a float Hugging Face directory (``config.json`` + safetensors): the layers as they are;
- an ascendv1 output (``quant_model_description.json``): each layer rebuilt from the saved files
  with the arithmetic vllm-ascend applies (``quantjob.worker.readers.ascend_forward``);
- a compressed-tensors output (llm-compressor's): converted layer by layer to the tensors the
  ascendv1 saver would write for the same integers (``quantjob.worker.readers.compressed_tensors_read``),
  then computed the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from quantjob.formats import formats
from quantjob.worker.errors import QuantJobError
from quantjob.worker.group.device import release_memory
from quantjob.worker.model.adapters import adapter_for
from quantjob.worker.model.checkpoint import Checkpoint
from quantjob.worker.model.decoder import (
    Skeleton,
    build_skeleton,
    layer_forward,
    materialise,
    release,
)
from quantjob.worker.model.model_config import read_model_config
from quantjob.worker.readers.ascend_forward import SavedModel, saved_layer

LOGIT_BLOCK_BYTES = 64 * 1024 * 1024  # float32 logits computed at once (positions x vocabulary)


@dataclass(frozen=True)
class Window:
    """One evaluated sequence: ``ids`` (1-D int64, the model's input) and the first position whose
    token is scored (position ``p`` is predicted from the logits at ``p - 1``)."""

    ids: torch.Tensor
    first_scored: int

    @property
    def scored(self) -> int:
        return len(self.ids) - max(self.first_scored, 1)


def make_windows(ids: Sequence[int] | torch.Tensor, max_length: int, stride: int | None = None,
                 bos_id: int | None = None) -> list[Window]:
    """Windows of at most ``max_length`` tokens over ``ids`` that score every token exactly once.

    With ``bos_id`` every window starts with it and the first text token is scored too; without,
    a window's first token is its context only (the text's first token is never scored). Either
    way a window holds ``max_length - 1`` text tokens it can score, so ``stride`` (default: that
    many, windows that do not overlap in what they score) may not exceed ``max_length - 1``.
    """
    tokens = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    scorable = max_length - 1
    stride = scorable if stride is None else stride
    if scorable < 1 or stride < 1 or stride > scorable:
        raise ValueError(f"need 1 <= stride <= max_length - 1; got max_length {max_length}, stride {stride}")
    total = len(tokens)
    if total < (1 if bos_id is not None else 2):
        raise ValueError(f"the text has {total} tokens: too few to score any")
    prefix = torch.tensor([bos_id], dtype=torch.long) if bos_id is not None else tokens[:0]
    text_span = max_length - len(prefix)
    windows: list[Window] = []
    scored_until = 0 if bos_id is not None else 1  # tokens before this index are scored already
    begin = 0
    while scored_until < total:
        end = min(begin + text_span, total)
        windows.append(Window(torch.cat([prefix, tokens[begin:end]]), len(prefix) + scored_until - begin))
        scored_until = end
        begin += stride
    return windows


@dataclass
class PerplexityResult:
    perplexity: float
    nll_sum: float
    tokens: int            # scored tokens
    windows: int
    max_length: int
    stride: int
    kind: str              # "float", "ascendv1" or "compressed-tensors"
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ModelSource(Protocol):
    """Where the layers and the outer tensors of a model directory come from."""

    kind: str

    def has(self, name: str) -> bool: ...

    def load(self, names: list[str], device: torch.device) -> dict[str, torch.Tensor]: ...

    def layer(self, skeleton: Skeleton, index: int, device: torch.device) -> Any:
        """A context manager yielding decoder layer ``index``, ready to run."""


class FloatSource:
    """A float Hugging Face model directory."""

    kind = "float"

    def __init__(self, model_dir: Path) -> None:
        self.checkpoint = Checkpoint(model_dir)

    def has(self, name: str) -> bool:
        return name in self.checkpoint.tensors

    def load(self, names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        return self.checkpoint.load(names, device)

    @contextmanager
    def layer(self, skeleton: Skeleton, index: int, device: torch.device) -> Iterator[torch.nn.Module]:
        prefix = skeleton.adapter.layer_prefix(index)
        module = skeleton.layers[index]
        try:
            materialise(module, prefix, self.checkpoint.load(self.checkpoint.names_under(prefix), device))
            yield module
        finally:
            release(module)


class SavedSource:
    """A quantized output (ascendv1, or compressed-tensors read as ascendv1): each layer rebuilt by
    ``saved_layer``; ``divide`` selects the fused norm-quantize arithmetic for static W8A8."""

    def __init__(self, output: SavedModel, kind: str, *, divide: bool = False) -> None:
        self.output, self.kind, self.divide = output, kind, divide

    def has(self, name: str) -> bool:
        return name in self.output.tensors

    def load(self, names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        return self.output.load(names, device)

    def layer(self, skeleton: Skeleton, index: int, device: torch.device) -> Any:
        return saved_layer(skeleton, index, self.output, device, divide=self.divide)


def open_model(model_dir: Path, *, divide: bool = False) -> ModelSource:
    """The source for a model directory: an output of the first registered format that recognises it
    (``quantjob.formats``: ascendv1 by its description file, compressed-tensors by its config), a float
    Hugging Face directory otherwise (one with another ``quantization_config`` is refused)."""
    read: dict[str, Any] = {}

    def read_config() -> dict[str, Any]:  # read once, and only when a format asks
        if "config" not in read:
            read["config"] = read_model_config(model_dir)
        config: dict[str, Any] = read["config"]
        return config

    registered = formats()
    for fmt in registered:
        if fmt.recognises(model_dir, read_config):
            return SavedSource(fmt.reader(model_dir), fmt.kind, divide=divide)
    quantization = read_config().get("quantization_config")
    if isinstance(quantization, dict) and quantization:
        method = quantization.get("quant_method", "unknown")
        what = [fmt.reads_what for fmt in registered]
        raise QuantJobError(f"{model_dir / 'config.json'}: quantization_config with quant_method {method!r}; "
                            f"quantjob perplexity reads float models, {', '.join(what[:-1])} and {what[-1]}")
    return FloatSource(model_dir)


def tokenize_text(text_file: Path, model_dir: Path, *, trust_remote_code: bool = False) -> tuple[list[int], int | None]:
    """The token ids of a UTF-8 text file (no special tokens) and the tokenizer's BOS id."""
    import transformers

    try:
        text = text_file.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise QuantJobError(f"text file {text_file} does not exist; fix --text") from error
    except (OSError, UnicodeDecodeError) as error:
        raise QuantJobError(f"text file {text_file}: cannot read it as UTF-8 text ({error}); fix --text") from error
    if not text.strip():
        raise QuantJobError(f"text file {text_file} is empty; give a text to score")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise QuantJobError(f"{model_dir}: cannot load the tokenizer ({str(error).splitlines()[0]}); the model "
                            "directory needs its tokenizer files") from error
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    return ids, (int(bos) if bos is not None else None)


def _head_weight(source: ModelSource, skeleton: Skeleton, device: torch.device) -> torch.Tensor:
    adapter = skeleton.adapter
    name = f"{adapter.lm_head}.weight"
    if source.has(name):
        return source.load([name], device)[name]
    if getattr(skeleton.config, "tie_word_embeddings", False):
        embed = f"{adapter.embed}.weight"
        return source.load([embed], device)[embed]
    raise QuantJobError(f"{name} is missing and the config does not tie it to the embedding; re-copy the model")


def window_nll(hidden: torch.Tensor, head: torch.Tensor, window: Window,
               softcap: float | None = None) -> torch.Tensor:
    """Summed negative log-likelihood (float64 scalar) of a window's scored tokens from its final
    (normed) hidden states ``[1, L, H]``: logits in the model dtype, log-softmax in float32."""
    start = max(window.first_scored, 1)
    rows = hidden[0, start - 1:len(window.ids) - 1]
    targets = window.ids[start:].to(hidden.device)
    block = max(1, LOGIT_BLOCK_BYTES // (4 * head.shape[0]))
    total = torch.zeros((), dtype=torch.float64)
    for first in range(0, rows.shape[0], block):
        logits = torch.nn.functional.linear(rows[first:first + block], head)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(1, targets[first:first + block].unsqueeze(1))
        total -= picked.double().sum().cpu()
    return total


def evaluate_windows(model_dir: Path, windows: list[Window], device: torch.device, *,
                     divide: bool = False, trust_remote_code: bool = False,
                     model_type: str | None = None) -> tuple[list[float], str]:
    """The summed NLL of every window (float64 sums, in window order) under the model in
    ``model_dir``, and the source kind (``float`` / ``ascendv1`` / ``compressed-tensors``)."""
    model_config = read_model_config(model_dir)
    adapter = adapter_for(model_config, model_type, config_file=str(model_dir / "config.json"))
    source = open_model(model_dir, divide=divide)
    skeleton = build_skeleton(model_dir, adapter, device, trust_remote_code=trust_remote_code)
    vocab = int(model_config.get("vocab_size") or 0)
    for number, window in enumerate(windows):
        if vocab and (int(window.ids.max()) >= vocab or int(window.ids.min()) < 0):
            raise QuantJobError(f"window {number} has token ids outside the model's vocabulary (0..{vocab - 1}); "
                                "tokenize with this model's tokenizer")
    with torch.inference_mode():
        name = f"{adapter.embed}.weight"
        table = source.load([name], device)[name]
        hidden = [skeleton.embed(window.ids.to(device), table) for window in windows]
        del table
        for index in range(skeleton.num_layers):
            with source.layer(skeleton, index, device) as layer:
                for number, h in enumerate(hidden):  # in place: one window's states at a time are doubled
                    hidden[number] = layer_forward(skeleton, index, layer, h)
            release_memory(device)
        norm = skeleton.model.get_submodule(adapter.final_norm)
        norm_prefix = adapter.final_norm + "."
        materialise(norm, norm_prefix, source.load([norm_prefix + key for key in norm.state_dict()], device))
        head = _head_weight(source, skeleton, device)
        softcap = getattr(skeleton.config, "final_logit_softcapping", None)
        try:
            nll = [float(window_nll(norm(h), head, window, softcap)) for window, h in zip(windows, hidden)]
        finally:
            release(norm)
    return nll, source.kind


def perplexity(model_dir: Path, text_file: Path, *, max_length: int = 512, stride: int | None = None,
               max_tokens: int | None = None, bos: bool = True, device: torch.device | None = None,
               divide: bool = False, trust_remote_code: bool = False,
               model_type: str | None = None) -> PerplexityResult:
    """Perplexity of ``model_dir`` on ``text_file`` (the first ``max_tokens`` tokens when given)."""
    started = time.monotonic()
    device = device or torch.device("cpu")
    ids, bos_id = tokenize_text(text_file, model_dir, trust_remote_code=trust_remote_code)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    try:
        windows = make_windows(ids, max_length, stride, bos_id if bos else None)
    except ValueError as error:
        raise QuantJobError(f"{text_file}: {error}") from error
    per_window, kind = evaluate_windows(model_dir, windows, device, divide=divide,
                                        trust_remote_code=trust_remote_code, model_type=model_type)
    nll, count = math.fsum(per_window), sum(w.scored for w in windows)
    return PerplexityResult(math.exp(nll / count), nll, count, len(windows), max_length,
                            stride if stride is not None else max_length - 1, kind, time.monotonic() - started)
