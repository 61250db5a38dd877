"""The ``quantjob`` command line. Each subcommand lives in its own module of this package.

A subcommand module exposes ``register(subparsers) -> None``; the parser it adds sets
``run=<callable(args) -> int>`` via ``set_defaults``. Modules import only argparse and
``quantjob.api`` at top level and load heavy dependencies (torch, kopf) inside ``run``, so
``quantjob validate`` works in the operator image without torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from quantjob import __version__

SUBCOMMANDS = ("validate", "crd", "quantize", "demo", "render", "operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantjob",
        description="Data-parallel, layer-wise post-training quantization of LLMs (msModelSlim compatible).")
    parser.add_argument("--version", action="version", version=f"quantjob {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"quantjob.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"quantjob.cli.{name}":
                continue  # subcommand not present in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("quantjob: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
