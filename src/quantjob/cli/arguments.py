"""Command-line arguments checked by pydantic: one ``error:`` line per bad flag."""

from __future__ import annotations

import sys

from pydantic import ValidationError


def report_argument_errors(prog: str, error: ValidationError) -> None:
    """Print ``<prog>: error: --<flag>: <why>`` on stderr for each problem pydantic found."""
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"])
        print(f"{prog}: error: {'--' + where + ': ' if where else ''}"
              f"{str(item['msg']).removeprefix('Value error, ')}", file=sys.stderr)
