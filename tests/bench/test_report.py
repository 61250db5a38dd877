"""Tables and the options that shape a run."""

from __future__ import annotations

import argparse

import pytest

from bench.forward import equal_length_batches, parse_result
from bench.models import ANCHOR, QUICK
from bench.options import add_common_args, int_list, workload_from_args
from bench.report import markdown_table


def test_markdown_table_pads_columns_and_formats_numbers() -> None:
    assert markdown_table(["run", "s"], [("a", 1234.5), ("long name", 0.01234)]).splitlines() == [
        "| run       | s      |",
        "|-----------|--------|",
        "| a         | 1234.5 |",
        "| long name | 0.012  |",
    ]


def test_batches_group_equal_lengths_in_file_order() -> None:
    samples = [[1] * 4, [1] * 2, [1] * 4, [1] * 4, [1] * 2]
    assert equal_length_batches(samples, 2) == [[0, 2], [3], [1, 4]]


def test_parse_result_takes_the_last_result_line() -> None:
    assert parse_result('noise\nRESULT {"load_s": 1.5}\nmore noise') == {"load_s": 1.5}
    with pytest.raises(ValueError, match="no RESULT line"):
        parse_result("Traceback ...")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    return parser.parse_args(argv)


def test_workload_defaults_to_the_anchor_job_and_quick_overrides() -> None:
    anchor = workload_from_args(_parse())
    assert (anchor.shape, anchor.samples, anchor.seq) == (ANCHOR, 64, 512)
    assert ANCHOR.layers == 16 and ANCHOR.hidden == 1024 and ANCHOR.intermediate == 2816 and ANCHOR.vocab == 32000
    quick = workload_from_args(_parse("--quick", "--layers", "3", "--seq", "16"))
    assert quick.shape.layers == 3 and quick.shape.hidden == QUICK.hidden and quick.seq == 16
    with pytest.raises(SystemExit, match="multiple of --heads"):
        workload_from_args(_parse("--hidden", "100"))


def test_int_list() -> None:
    assert int_list("8,16, 32") == [8, 16, 32]
    for bad in ("8,x", "0", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            int_list(bad)
