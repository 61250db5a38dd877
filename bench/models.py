"""The benchmark's models and calibration files, built once and cached under ``bench/.cache/``.

A model directory is keyed by its shape (``llama-L16-h1024-i2816-v32000-...``) and built with
``quantjob.worker.model.demo.build_demo_model`` into a temporary directory that is renamed into place
when complete, so an interrupted build is never mistaken for a cached one. Calibration files hold
``{"input_ids": [...]}`` lines of seeded random token ids: a real-size vocabulary (32000) cannot
be reached by the demo tokenizer trained on the shipped corpus, and the benchmark needs every
sample to have exactly ``seq`` tokens.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
FIRST_TOKEN_ID = 4  # ids 0-3 are the demo tokenizer's special tokens (<unk>, <s>, </s>, <pad>)


@dataclass(frozen=True)
class ModelShape:
    """The shape of one benchmark model (a random-weight Llama in bf16 with activation outliers)."""

    layers: int = 16
    hidden: int = 1024
    intermediate: int = 2816
    vocab: int = 32000
    heads: int = 16
    kv_heads: int = 16
    outlier_channels: int = 4
    seed: int = 0

    @property
    def key(self) -> str:
        return (f"llama-L{self.layers}-h{self.hidden}-i{self.intermediate}-v{self.vocab}"
                f"-a{self.heads}-kv{self.kv_heads}-o{self.outlier_channels}-s{self.seed}")

    def with_layers(self, layers: int) -> ModelShape:
        return replace(self, layers=layers)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


ANCHOR = ModelShape()
QUICK = ModelShape(layers=2, hidden=128, intermediate=352, vocab=1024, heads=4, kv_heads=4,
                   outlier_channels=2)


def weights_bytes(directory: Path) -> int:
    """Total size of the safetensors files of a model directory."""
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def model_dir(shape: ModelShape, cache: Path = CACHE_DIR) -> Path:
    """The cached model directory of ``shape``, built first when missing."""
    import torch

    from quantjob.worker.model.demo import build_demo_model

    target = cache / "models" / shape.key
    if (target / "config.json").is_file():
        return target
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    build_demo_model(building, family="llama", num_layers=shape.layers, hidden_size=shape.hidden,
                     intermediate_size=shape.intermediate, num_heads=shape.heads,
                     num_kv_heads=shape.kv_heads, vocab_size=shape.vocab, dtype=torch.bfloat16,
                     seed=shape.seed, outlier_channels=shape.outlier_channels)
    check_embedding_rows(building, shape.vocab)
    building.rename(target)
    return target


def check_embedding_rows(directory: Path, vocab: int) -> None:
    """Fail when the built model's embedding does not have ``vocab`` rows (the calibration ids need them)."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if config.get("vocab_size") != vocab:
        raise RuntimeError(f"{directory / 'config.json'}: vocab_size is {config.get('vocab_size')}, "
                           f"the benchmark asked for {vocab}; build_demo_model must keep the requested size")
    from safetensors import safe_open

    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            if "model.embed_tokens.weight" in handle.keys():  # noqa: SIM118 (safe_open handles have no __contains__)
                rows = handle.get_slice("model.embed_tokens.weight").get_shape()[0]
                if rows != vocab:
                    raise RuntimeError(f"{file}: model.embed_tokens.weight has {rows} rows, expected {vocab}")
                return
    raise RuntimeError(f"{directory}: no model.embed_tokens.weight in any safetensors file")


def calibration_file(samples: int, seq: int, vocab: int, *, seed: int = 0, cache: Path = CACHE_DIR) -> Path:
    """A jsonl file of ``samples`` lines ``{"input_ids": [...]}``, each ``seq`` ids in [4, vocab)."""
    if vocab <= FIRST_TOKEN_ID:
        raise ValueError(f"vocab {vocab} leaves no ordinary token ids (ids below {FIRST_TOKEN_ID} are special)")
    path = cache / "calibration" / f"ids-n{samples}-t{seq}-v{vocab}-s{seed}.jsonl"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = [json.dumps({"input_ids": [rng.randrange(FIRST_TOKEN_ID, vocab) for _ in range(seq)]})
             for _ in range(samples)]
    partial = path.with_suffix(".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.rename(path)
    return path


def read_calibration_ids(path: Path) -> list[list[int]]:
    """The token id lists of a calibration file written by :func:`calibration_file`."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["input_ids"] for line in handle if line.strip()]
