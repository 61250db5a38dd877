"""The ``quantjob`` command line. Each subcommand lives in its own module of this package.

A subcommand module exposes ``register(subparsers) -> None``; the parser it adds sets
``run=<callable(args) -> int>`` via ``set_defaults``. Modules import only argparse and
``quantjob.api`` at top level and load heavy dependencies (torch, kopf) inside ``run``, so
``quantjob validate`` works in the operator image without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from quantjob import __version__

SUBCOMMANDS = ("validate", "crd", "quantize", "demo", "render", "operator", "perplexity")


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


def entry() -> NoReturn:
    """The process entry point (the ``quantjob`` script, ``python -m quantjob.cli``).

    After ``main`` returns, output is flushed and the process leaves with ``os._exit``: with torch
    and transformers loaded, the interpreter's teardown takes about 0.9 s, paid by every rank at
    the end of every job (and waited for by the launcher). Everything a command writes is
    committed (fsync'ed) and its threads are joined before ``main`` returns. An exception that
    escapes ``main`` takes the normal way out, with its traceback.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code)
