"""The operator image has no torch: quantjob.api, quantjob.operator, quantjob.cli and what they import
(quantjob.formats, quantjob.families) must not load it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "quantjob.worker")))))
"""


@pytest.mark.parametrize("module", ["quantjob.api", "quantjob.api.check", "quantjob.api.crd", "quantjob.api.globs",
                                    "quantjob.operator", "quantjob.cli", "quantjob.formats",
                                    "quantjob.families"])
def test_import_loads_neither_torch_nor_the_worker(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], check=False, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_building_the_cli_parser_loads_no_torch() -> None:
    probe = ("import sys; from quantjob.cli import build_parser; build_parser(); "
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_stdlib_operator_is_not_shadowed() -> None:
    done = subprocess.run([sys.executable, "-c", "import operator, quantjob.operator; print(operator.add(1, 2))"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
