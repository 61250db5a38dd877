"""Perplexity of a model directory by transformers' own whole-model forward (a cross-check).

Runs inside the llm-compressor venv (``bench/llmc/venv.py``), where transformers reads
compressed-tensors directories itself: ``.venv-llmc/bin/python bench/llmc/score.py --model DIR
--text FILE --max-tokens N``. The windows are those of ``quantjob perplexity`` with its defaults
(the text's ids without special tokens, cut into windows of ``max_length - 1`` text tokens that do
not overlap, each starting with BOS, every text token scored once), so on the same tokens the two
figures differ only by the arithmetic: this one is what transformers computes from the output,
``quantjob perplexity`` what vllm-ascend computes. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    ids = tokenizer(args.text.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:args.max_tokens]
    bos = tokenizer.bos_token_id
    if bos is None:
        print(f"score.py: {args.model} has no BOS token; these windows need one", file=sys.stderr)
        return 2
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    model.eval()
    step = args.max_length - 1
    nll, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), step):
            window = torch.tensor([[bos, *ids[begin:begin + step]]])
            logits = model(window).logits[0].float()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            nll -= float(logprobs.gather(1, window[0, 1:, None]).double().sum())
            count += window.shape[1] - 1
    print(json.dumps({"model": str(args.model), "tokens": count, "perplexity": math.exp(nll / count),
                      "seconds": time.perf_counter() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
