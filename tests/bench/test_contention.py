"""bench.contention: two processes released at once around a plain decoder layer (tiny shape, no
timing asserted), and the best-case speed-up it feeds."""

from __future__ import annotations

import pytest

from bench import contention
from bench.models import ModelShape


@pytest.mark.timeout(300)
def test_a_pair_of_plain_layers_is_timed_against_one_alone() -> None:
    tiny = ModelShape(hidden=64, intermediate=128, heads=4, kv_heads=4, vocab=256)
    found = contention.measure(tiny, seq=8, iterations=3, rounds=2)
    assert found.alone_ms > 0 and found.pair_ms > 0
    assert found.factor == pytest.approx(found.pair_ms / found.alone_ms)


def test_best_speedup_pays_the_fixed_cost_once_and_slows_the_halves() -> None:
    # 100 s alone, 10 s of it fixed: 10 + 45 = 55 s on two ranks at best (1.82x); slowed 6%: 10 + 47.7
    assert contention.best_speedup(100.0, 10.0, 1.0) == pytest.approx(100 / 55)
    assert contention.best_speedup(100.0, 10.0, 1.06) == pytest.approx(100 / 57.7)
    assert contention.best_speedup(100.0, 0.0, 1.0) == pytest.approx(2.0)
