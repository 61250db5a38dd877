"""``quantjob perplexity``: score a model directory on a text, one decoder layer at a time.

Works for a float Hugging Face model directory, an ascendv1 output (each quantized linear computes
what vllm-ascend computes from the saved tensors) and a compressed-tensors output (converted to the
same tensors layer by layer). Prints one line, and with ``--json``
writes every figure to a file. Exit codes: 2 for bad flags, 3 for bad input (model, text).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quantjob.api.exit_codes import INPUT, OK, USAGE
from quantjob.cli.arguments import report_argument_errors


class PerplexityArgs(BaseModel):
    """The command line, validated."""

    model_config = ConfigDict(extra="forbid")

    model_path: Path
    text: Path
    max_length: int = Field(512, ge=2)
    stride: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=2)
    device: str = "cpu"
    no_bos: bool = False
    fused_quant: bool = False
    model_type: str | None = None
    trust_remote_code: bool = False
    json_path: Path | None = None

    @model_validator(mode="after")
    def _stride_fits(self) -> PerplexityArgs:
        span = self.max_length - 1
        if self.stride is not None and self.stride > span:
            raise ValueError(f"--stride {self.stride}: a window scores at most --max_length - 1 = {span} "
                             f"tokens; give --stride <= {span}")
        return self


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "perplexity", help="perplexity of a float model or a quantized output on a text, layer by layer",
        description="Perplexity of a model directory (float Hugging Face, or an ascendv1 or compressed-tensors "
                    "output scored with vllm-ascend's arithmetic) on a UTF-8 text, computed one decoder layer "
                    "at a time.")
    parser.add_argument("--model_path", required=True,
                        help="float model directory, or an ascendv1 or compressed-tensors output directory")
    parser.add_argument("--text", required=True, help="UTF-8 text file to score")
    parser.add_argument("--max_length", type=int, default=512, help="tokens per window, BOS included (default 512)")
    parser.add_argument("--stride", type=int, help="tokens between window starts (default: max_length - 1, "
                                                   "windows that do not overlap in what they score)")
    parser.add_argument("--max_tokens", type=int, help="score only the first N tokens of the text")
    parser.add_argument("--device", default="cpu", help="cpu | cuda:0 | npu:0 (one device; default cpu)")
    parser.add_argument("--no_bos", action="store_true", help="do not start each window with the BOS token")
    parser.add_argument("--fused_quant", action="store_true",
                        help="static W8A8: divide by input_scale (vllm-ascend's fused norm-quantize path) instead "
                             "of multiplying by its rounded reciprocal (the eager path, default)")
    parser.add_argument("--model_type", help="override config.json's model_type")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow the model's own Python code")
    parser.add_argument("--json", dest="json_path", help="also write the result as JSON to this file")
    parser.set_defaults(run=run)


def run(namespace: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(namespace).items() if k in PerplexityArgs.model_fields and v is not None}
    try:
        args = PerplexityArgs.model_validate(values)
    except ValidationError as error:
        report_argument_errors("quantjob perplexity", error)
        return USAGE

    from quantjob.worker.errors import QuantJobError
    from quantjob.worker.group import device as devices
    from quantjob.worker.readers.perplexity import perplexity

    try:
        spec = devices.parse_devices(args.device)
    except ValueError as error:
        print(f"quantjob perplexity: error: {error}", file=sys.stderr)
        return USAGE
    if spec.count != 1:
        print(f"quantjob perplexity: error: --device {args.device} names {spec.count} devices; give one",
              file=sys.stderr)
        return USAGE
    try:
        device = devices.torch_device(spec.type, spec.indices[0])
        result = perplexity(args.model_path, args.text, max_length=args.max_length, stride=args.stride,
                            max_tokens=args.max_tokens, bos=not args.no_bos, device=device,
                            divide=args.fused_quant, trust_remote_code=args.trust_remote_code,
                            model_type=args.model_type)
    except QuantJobError as error:
        print(f"quantjob perplexity: error: {error}", file=sys.stderr)
        return INPUT
    print(f"perplexity {result.perplexity:.4f} over {result.tokens} tokens ({result.windows} windows of "
          f"{result.max_length}, stride {result.stride}), {result.kind} model, {result.seconds:.1f}s")
    if args.json_path is not None:
        args.json_path.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")
    return OK
