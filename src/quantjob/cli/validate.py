"""``quantjob validate FILE [--devices N]``: check a QuantJob manifest or a modelslim_v1 config;
``quantjob validate --model_path DIR [--devices N]``: print each rank's peak memory estimate.

Prints one line per problem, ``path: message`` (warnings as ``path: warning: message``), and exits 1
when any document has an error, 0 otherwise. Multi-document YAML is checked document by document;
a YAML syntax error prints ``FILE:line: message``. A file larger than 3 MiB, nested deeper than 64
or standing for more than 20000 values through aliases is refused the same way, before it is
built (``quantjob.api.yaml_input``). Needs neither torch nor a cluster.

With ``--model_path`` the model's headers give every rank's peak memory
(``quantjob.worker.model.memory_estimate``) for ``--devices`` ranks and ``--calib_samples`` samples of
``--max_length`` tokens (the longest a sample can be); with ``--memory_limit`` a rank that does not
fit makes the exit status 1. An unreadable model directory exits 1 with the reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from quantjob.api.check import Resolution
from quantjob.api.problems import Problem, has_errors
from quantjob.api.resource import KIND
from quantjob.api.yaml_input import MAX_BYTES, YamlProblem, load_documents, too_large
from quantjob.operator.review import CHECKED_KEYS, review_document


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--devices must be at least 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate", help="check a QuantJob manifest or a modelslim_v1 config",
        description="Check a QuantJob manifest or a modelslim_v1 config (as for `msmodelslim quant "
                    "--config_path`) with the same rules as the admission webhook. Prints `path: message` "
                    "per problem; exits 1 on any error.")
    parser.add_argument("file", metavar="FILE", nargs="?",
                        help="YAML file ('-' reads stdin); several documents allowed")
    parser.add_argument("--devices", type=_positive, metavar="N",
                        help="number of devices to check for (overrides a QuantJob's spec.devices.count; "
                             "default: the manifest's count, 1 for a bare config)")
    model = parser.add_argument_group("memory estimate (with --model_path)")
    model.add_argument("--model_path", type=Path, metavar="DIR",
                       help="a model directory: print every rank's peak memory estimate")
    model.add_argument("--model_type", help="override config.json's model_type (as quantize takes it)")
    model.add_argument("--calib_samples", type=_positive, default=128, metavar="N",
                       help="calibration samples (default 128, as quantize)")
    model.add_argument("--max_length", type=_positive, default=2048, metavar="N",
                       help="tokens per sample at most; every sample is counted this long (default 2048)")
    model.add_argument("--error_samples", type=int, default=8, metavar="N", help="as quantize (default 8)")
    model.add_argument("--next_layer_input", choices=("float", "quantized"), default="float",
                       help="as quantize (default float)")
    model.add_argument("--device_type", choices=("cpu", "npu", "cuda"), default="cpu",
                       help="the ranks' device: on npu or cuda the layer read ahead waits in host memory (reported "
                            "beside the device's figure); on cpu the heap's allocator term is added (default cpu)")
    model.add_argument("--memory_limit", metavar="QUANTITY",
                       help="what one rank may use (e.g. 64Gi): exit 1 when a rank's estimate is larger")
    parser.set_defaults(run=run)


def estimate_text(args: argparse.Namespace, out: TextIO) -> int:
    """Print the per-rank estimate for ``args.model_path``; the exit status."""
    from quantjob.worker.errors import QuantJobError
    from quantjob.worker.model.adapters import adapter_for
    from quantjob.worker.model.checkpoint import Checkpoint
    from quantjob.worker.model.fp8 import fp8_blocks
    from quantjob.worker.model.memory_estimate import (
        Capacity,
        Dims,
        check_fits,
        gib,
        layer_bytes,
        parse_size,
        rank_peaks,
        weights_peak,
    )
    from quantjob.worker.model.model_config import read_model_config

    devices = args.devices or 1
    config_file = str(args.model_path / "config.json")
    try:
        model_config = read_model_config(args.model_path)
        adapter = adapter_for(model_config, args.model_type, config_file=config_file)
        checkpoint = Checkpoint(args.model_path, fp8_blocks(model_config, config_file))
        text = model_config.get("text_config") or model_config
        sizes = layer_bytes(checkpoint.tensors, adapter, int(text["num_hidden_layers"]))
        dims = Dims.of(model_config)
        capacity = None
        if args.memory_limit:
            limit_bytes = parse_size(args.memory_limit)
            if limit_bytes is None:
                raise ValueError(f"--memory_limit {args.memory_limit!r} is not a memory size; give bytes or a "
                                 "Kubernetes quantity such as 64Gi")
            capacity = Capacity(limit_bytes, f"--memory_limit {args.memory_limit}")
    except (QuantJobError, KeyError, TypeError, ValueError) as error:
        detail = f"config.json has no {error}" if isinstance(error, KeyError) else str(error)
        out.write(f"{args.model_path}: {detail}\n")
        return 1
    peaks = rank_peaks(sizes, dims, [args.max_length] * args.calib_samples, devices,
                       error_samples=args.error_samples, holding="quantized" if args.next_layer_input == "quantized"
                       else "float", accelerator=args.device_type != "cpu")
    weights, at = weights_peak(sizes)
    fp8 = " (FP8, counted dequantized to bf16)" if checkpoint.fp8 else ""
    out.write(f"{args.model_path}: {len(sizes.layers)} decoder layers{fp8}; largest layer "
              f"{gib(max(sizes.layers, default=0))}, embedding {gib(sizes.embedding)}; weights held at layer {at}: "
              f"{gib(weights)} (the layer, its int8 codes, and the previous layer's codes the saver may hold or one "
              "dequantized linear)\n")
    out.writelines(f"  {peak.explain()}\n" for peak in peaks)
    worst = max(peaks, key=lambda p: p.total)
    try:
        check_fits(peaks, capacity, f"each {args.device_type} device")
    except QuantJobError as error:
        out.write(f"{args.model_path}: {error}\n")
        return 1
    within = f" within {gib(capacity.bytes)}" if isinstance(capacity, Capacity) else ""
    host = "" if worst.host_total is None else f", and {gib(worst.host_total)} of host memory beside it"
    out.write(f"{args.model_path}: peak per rank about {gib(worst.total)} on {devices} {args.device_type} "
              f"device(s){within}{host}\n")
    return 0


def _read(name: str) -> str | YamlProblem:
    """The text of ``name`` ('-' for stdin), or why not when it is larger than the limit (read no further)."""
    if name == "-":
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
        size = len(data)
    else:
        with open(name, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
            size = max(len(data), Path(name).stat().st_size)
    problem = too_large(size)
    return problem if problem is not None else data.decode("utf-8")


def _load_all(name: str, text: str, out: TextIO) -> list[Any] | None:
    """The documents of ``text`` (empty ones dropped), or None after printing why they cannot be read."""
    found = load_documents(text)
    if isinstance(found, YamlProblem):
        out.write(f"{name}:{'' if found.line is None else f'{found.line}:'} {found.message}\n")
        return None
    return found


def _review(document: Any, devices: int | None) -> Resolution:
    """The webhook's verdict (``review_document``), and, for a QuantJob, its unknown top-level keys,
    which the API server refuses before any webhook sees the object."""
    result = review_document(document, devices=devices)
    if isinstance(document, dict) and document.get("kind") == KIND:
        unknown = [key for key in document if key not in (*CHECKED_KEYS, "status")]
        result.problems = [Problem(str(key), f"unknown field {key!r}; remove it or check its spelling")
                           for key in unknown] + result.problems
    return result


def validate_text(name: str, text: str, devices: int | None, out: TextIO) -> int:
    """Check every document of ``text``; print problems to ``out``; the exit status."""
    documents = _load_all(name, text, out)
    if documents is None:
        return 1
    if not documents:
        out.write(f"{name}: no YAML document found (expected a QuantJob or a modelslim_v1 config)\n")
        return 1
    failed = False
    for index, document in enumerate(documents):
        result = _review(document, devices)  # the webhook's verdict
        label = name if len(documents) == 1 else f"{name} (document {index + 1} of {len(documents)})"
        out.writelines(f"{problem}\n" for problem in result.problems)
        if has_errors(result.problems):
            failed = True
            out.write(f"{label}: invalid\n")
        else:
            out.write(f"{label}: ok (runner {result.runner}, world size {result.world_size})\n")
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    if args.model_path is not None:
        status = estimate_text(args, sys.stdout)
        if args.file is None:
            return status
        return max(status, run_file(args))
    if args.file is None:
        print("quantjob validate: give FILE (a QuantJob or modelslim_v1 config) or --model_path DIR",
              file=sys.stderr)
        return 2
    return run_file(args)


def run_file(args: argparse.Namespace) -> int:
    try:
        text = _read(args.file)
    except (OSError, UnicodeDecodeError) as error:
        print(f"{args.file}: cannot read: {error}", file=sys.stderr)
        return 1
    if isinstance(text, YamlProblem):
        print(f"{args.file}: {text.message}", file=sys.stderr)
        return 1
    return validate_text(args.file, text, args.devices, sys.stdout)
