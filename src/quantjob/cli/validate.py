"""``quantjob validate FILE [--devices N]``: check a QuantJob manifest or a modelslim_v1 config.

Prints one line per problem, ``path: message`` (warnings as ``path: warning: message``), and exits 1
when any document has an error, 0 otherwise. Multi-document YAML is checked document by document;
a YAML syntax error prints ``FILE:line: message``. Needs neither torch nor a cluster.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from quantjob.api.problems import has_errors
from quantjob.operator.review import review_document


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
    parser.add_argument("file", metavar="FILE", help="YAML file ('-' reads stdin); several documents allowed")
    parser.add_argument("--devices", type=_positive, metavar="N",
                        help="number of devices to check for (overrides a QuantJob's spec.devices.count; "
                             "default: the manifest's count, 1 for a bare config)")
    parser.set_defaults(run=run)


def _read(name: str) -> str:
    return sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")


def _load_all(name: str, text: str, out: TextIO) -> list[Any] | None:
    """The documents of ``text`` (empty ones dropped), or None after printing the syntax error."""
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        reason = getattr(error, "problem", None) or str(error)
        out.write(f"{name}:{line} invalid YAML: {reason}\n")
        return None


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
        result = review_document(document, devices=devices)  # the webhook's verdict
        label = name if len(documents) == 1 else f"{name} (document {index + 1} of {len(documents)})"
        out.writelines(f"{problem}\n" for problem in result.problems)
        if has_errors(result.problems):
            failed = True
            out.write(f"{label}: invalid\n")
        else:
            out.write(f"{label}: ok (runner {result.runner}, world size {result.world_size})\n")
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    try:
        text = _read(args.file)
    except (OSError, UnicodeDecodeError) as error:
        print(f"{args.file}: cannot read: {error}", file=sys.stderr)
        return 1
    return validate_text(args.file, text, args.devices, sys.stdout)
