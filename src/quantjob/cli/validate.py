"""``quantjob validate FILE [--devices N]``: check a QuantJob manifest or a modelslim_v1 config.

Prints one line per problem, ``path: message`` (warnings as ``path: warning: message``), and exits 1
when any document has an error, 0 otherwise. Multi-document YAML is checked document by document;
a YAML syntax error prints ``FILE:line: message``. A file larger than 3 MiB, nested deeper than 64
or standing for more than 20000 values through aliases is refused the same way, before it is
built (``quantjob.api.yaml_input``). Needs neither torch nor a cluster.
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
    parser.add_argument("file", metavar="FILE", help="YAML file ('-' reads stdin); several documents allowed")
    parser.add_argument("--devices", type=_positive, metavar="N",
                        help="number of devices to check for (overrides a QuantJob's spec.devices.count; "
                             "default: the manifest's count, 1 for a bare config)")
    parser.set_defaults(run=run)


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
    try:
        text = _read(args.file)
    except (OSError, UnicodeDecodeError) as error:
        print(f"{args.file}: cannot read: {error}", file=sys.stderr)
        return 1
    if isinstance(text, YamlProblem):
        print(f"{args.file}: {text.message}", file=sys.stderr)
        return 1
    return validate_text(args.file, text, args.devices, sys.stdout)
