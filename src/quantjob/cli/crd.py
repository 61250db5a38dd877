"""``quantjob crd [--output PATH]``: write the QuantJob CustomResourceDefinition generated from the models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from quantjob.api.crd import DEFAULT_PATH, render_crd


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("crd", help="write the QuantJob CRD (generated from the API models)",
                                   description="Write the apiextensions.k8s.io/v1 CustomResourceDefinition of "
                                               "QuantJob, generated from quantjob.api.")
    parser.add_argument("--output", "-o", default=DEFAULT_PATH, metavar="PATH",
                        help=f"file to write ('-' = stdout; default {DEFAULT_PATH})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    text = render_crd()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        print(f"{path}: cannot write the CRD: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
