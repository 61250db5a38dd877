"""Suite-wide: files that hold a ``slow`` test run first.

`python3 -m pytest -n 2 --dist loadfile` (the README's test command) hands whole files to two
workers in collection order, and collection order is alphabetical, so the multi-process worker
files (``tests/worker/test_dp_equivalence.py``, ``test_moe_dp.py``, ...) came last and one worker
ran the tail alone. Starting with them lets the many short files fill in beside them. The order
inside a file is unchanged; every worker computes the same order.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: False (slow files) first
