"""The baseline child process: load the whole model with transformers and run a plain bf16 forward.

``python -m bench.forward --model DIR --calib FILE --mode load|forward [--batch 8] [--batch1]``
prints one JSON line (prefixed ``RESULT ``) with the times it measured itself:

* ``load_s``: ``AutoModelForCausalLM.from_pretrained(dtype=bfloat16)`` and one read of every
  weight (transformers may leave safetensors memory-mapped and untouched until first use);
* ``batched_decoder_s`` / ``batched_lm_head_s``: the calibration tokens in batches of ``--batch``
  samples of equal length (as a user would batch them), through the decoder stack and then the
  lm_head; their sum is one plain forward pass of the whole model;
* ``batch1_decoder_s`` / ``batch1_lm_head_s``: the same, one sample at a time (``--batch1``),
  which is how the quantizer forwards samples (one per micro-batch, for rank-independent bits).

``--mode load`` stops after loading: its peak RSS is what holding the whole model takes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

RESULT_PREFIX = "RESULT "


def equal_length_batches(samples: Sequence[Sequence[int]], batch: int) -> list[list[int]]:
    """Indices of ``samples`` grouped into batches of at most ``batch`` samples of equal length, in file order."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(samples):
        by_length[len(ids)].append(index)
    return [indices[start:start + batch] for indices in by_length.values()
            for start in range(0, len(indices), batch)]


def touch_weights(model: object) -> None:
    """Read every parameter and buffer once, so weights that ``from_pretrained`` left memory-mapped
    and untouched become resident: the load's peak RSS is then what holding the model takes."""
    import torch

    with torch.inference_mode():
        for tensor in [*model.parameters(), *model.buffers()]:  # type: ignore[attr-defined]
            tensor.sum()


def _forward(model: object, samples: list[list[int]], batches: list[list[int]],
             lm_head: bool = True) -> tuple[float, float]:
    import torch

    decoder_s = lm_head_s = 0.0
    with torch.inference_mode():
        for indices in batches:
            input_ids = torch.tensor([samples[i] for i in indices], dtype=torch.long)
            start = time.perf_counter()
            hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state  # type: ignore[attr-defined]
            middle = time.perf_counter()
            if lm_head:
                model.lm_head(hidden)  # type: ignore[attr-defined]
            end = time.perf_counter()
            decoder_s += middle - start
            lm_head_s += end - middle
            del hidden
    return decoder_s, lm_head_s


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forward", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True, help="jsonl of {\"input_ids\": [...]} lines")
    parser.add_argument("--mode", choices=("load", "forward"), default="forward")
    parser.add_argument("--batch", type=int, default=8, help="samples per batch for the batched pass")
    parser.add_argument("--batch1", action="store_true", help="also time the pass one sample at a time")
    parser.add_argument("--samples", type=int,
                        help="read the calibration as `quantjob quantize` does (text or ids, its first N usable "
                             "samples, truncated to --max-length), not as plain token ids")
    parser.add_argument("--max-length", type=int, default=512, help="with --samples: tokens per sample")
    parser.add_argument("--no-lm-head", action="store_true",
                        help="time the decoder stack alone (a large vocabulary's lm_head can cost as much)")
    args = parser.parse_args(argv)

    import torch
    import transformers

    from bench.models import read_calibration_ids

    transformers.utils.logging.disable_progress_bar()
    result: dict[str, float | int] = {"threads": torch.get_num_threads()}
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    model.eval()
    touch_weights(model)
    result["load_s"] = time.perf_counter() - start
    if args.mode == "forward":
        if args.samples:
            from quantjob.worker.loop.calibration import load_calibration

            loaded = load_calibration(args.calib, args.model, samples=args.samples, max_length=args.max_length)
            samples = [ids.flatten().tolist() for ids in loaded.samples]
        else:
            samples = read_calibration_ids(args.calib)
        result["samples"] = len(samples)
        result["tokens"] = sum(len(s) for s in samples)
        _forward(model, samples, [[0]])  # warm-up: one-time kernel selection and allocations
        decoder_s, lm_head_s = _forward(model, samples, equal_length_batches(samples, args.batch),
                                        lm_head=not args.no_lm_head)
        result.update(batched_decoder_s=decoder_s, batched_lm_head_s=lm_head_s, batch=args.batch)
        if args.batch1:
            decoder_s, lm_head_s = _forward(model, samples, [[i] for i in range(len(samples))],
                                            lm_head=not args.no_lm_head)
            result.update(batch1_decoder_s=decoder_s, batch1_lm_head_s=lm_head_s)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def parse_result(log_text: str) -> dict[str, float]:
    """The JSON a ``bench.forward`` child printed, from its log."""
    for line in reversed(log_text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise ValueError("the forward child printed no RESULT line; see its log")


if __name__ == "__main__":
    sys.exit(main())
