"""Quantize a model directory with llm-compressor and a named recipe; save it; report timings.

Runs inside the llm-compressor venv (``bench/llmc/venv.py``), never in the project's environment:
``.venv-llmc/bin/python bench/llmc/quantize.py --model DIR --recipe NAME --calib FILE --save OUT``.
Standard library, torch, transformers, datasets and llmcompressor only (quantjob is not installed
there). The saved directory is compressed-tensors (``save_compressed=True``). A JSON report
(``--report``) holds the seconds spent loading, calibrating/quantizing and saving.

Recipes (``--recipe``), all with the lm_head left in float:

- ``w8a8-static``: int8 weights (symmetric, per output channel, minmax) and static int8
  activations (asymmetric, per tensor, the range over every calibration token: ``static_minmax``);
- ``smoothquant-w8a8-static``: ``SmoothQuantModifier(smoothing_strength)`` first (default 0.8);
- ``w8a8-dynamic`` / ``smoothquant-w8a8-dynamic``: the same weights, per-token dynamic activations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

WEIGHTS = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "observer": "minmax"}
# "static_minmax": the range over every calibration token (llm-compressor's "minmax" observer is a
# moving average of per-batch ranges, which clips the calibration set's own extremes)
STATIC_ACT = {"num_bits": 8, "type": "int", "symmetric": False, "strategy": "tensor", "dynamic": False,
              "observer": "static_minmax"}
DYNAMIC_ACT = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}
RECIPES = ("w8a8-static", "smoothquant-w8a8-static", "w8a8-dynamic", "smoothquant-w8a8-dynamic")


def recipe(name: str, smoothing_strength: float) -> list[Any]:
    from llmcompressor.modifiers.quantization import QuantizationModifier  # type: ignore[import-not-found]
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier  # type: ignore[import-not-found]

    if name not in RECIPES:
        raise SystemExit(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    act = STATIC_ACT if name.endswith("static") else DYNAMIC_ACT
    modifiers: list[Any] = []
    if name.startswith("smoothquant"):
        modifiers.append(SmoothQuantModifier(smoothing_strength=smoothing_strength))
    modifiers.append(QuantizationModifier(
        config_groups={"group_0": {"targets": ["Linear"], "weights": dict(WEIGHTS), "input_activations": dict(act)}},
        ignore=["lm_head"]))
    return modifiers


def calibration(path: Path, tokenizer: Any, samples: int, seq: int) -> Any:
    """A datasets.Dataset of ``input_ids`` / ``attention_mask`` from a jsonl of ``{"input_ids"}`` or
    ``{"text"}`` lines (the first ``samples``, at most ``seq`` tokens each)."""
    from datasets import Dataset  # type: ignore[import-not-found]

    rows: list[list[int]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            item = json.loads(line)
            ids = item["input_ids"] if "input_ids" in item else tokenizer(item["text"])["input_ids"]
            rows.append(list(ids)[:seq])
            if len(rows) == samples:
                break
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--recipe", required=True, choices=RECIPES)
    parser.add_argument("--calib", type=Path, required=True, help="jsonl of {input_ids} or {text} lines")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--save", type=Path, required=True)
    parser.add_argument("--smoothing-strength", type=float, default=0.8)
    parser.add_argument("--report", type=Path, help="write the timings here as JSON")
    args = parser.parse_args(argv)

    import torch
    from llmcompressor import oneshot  # type: ignore[import-not-found]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    dataset = calibration(args.calib, tokenizer, args.samples, args.seq)
    loaded = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=recipe(args.recipe, args.smoothing_strength),
            max_seq_length=args.seq, num_calibration_samples=len(dataset))
    quantized = time.perf_counter()
    model.save_pretrained(str(args.save), save_compressed=True)
    tokenizer.save_pretrained(str(args.save))
    saved = time.perf_counter()
    report = {"recipe": args.recipe, "samples": len(dataset), "load_s": loaded - started,
              "oneshot_s": quantized - loaded, "save_s": saved - quantized, "total_s": saved - started,
              "torch": torch.__version__}
    print(json.dumps(report))
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
