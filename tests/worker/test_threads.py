"""Thread counts and thread-count-independent arithmetic (issue 14, item 14)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from quantjob.worker.group.threads import (
    reproducible_math_env,
    sum_of_squares,
    threads_per_rank,
)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("ranks", "cores", "env", "expected"), [
    (1, 8, {}, 8), (2, 8, {}, 4), (3, 8, {}, 2), (16, 8, {}, 1), (2, 8, {"OMP_NUM_THREADS": "3"}, 3),
    (1, 8, {"OMP_NUM_THREADS": " "}, 8), (1, 8, {"OMP_NUM_THREADS": "0"}, 8),
])
def test_one_rule_for_one_process_and_for_launched_ranks(ranks: int, cores: int, env: dict[str, str],
                                                         expected: int) -> None:
    assert threads_per_rank(ranks, cores, env) == expected


def test_error_sums_do_not_depend_on_the_thread_count(restore_threads: None) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 512, 1024, dtype=torch.bfloat16)  # above the size where .sum() splits by thread
    by_threads = {}
    for threads in (1, 2, 3, 4):
        torch.set_num_threads(threads)
        by_threads[threads] = sum_of_squares(x)
    assert len(set(by_threads.values())) == 1
    assert by_threads[1] == pytest.approx(float(x.double().pow(2).sum()), rel=1e-12)


def test_mkl_mode_is_set_unless_chosen() -> None:
    env: dict[str, str] = {}
    reproducible_math_env(env)
    assert env == {"MKL_CBWR": "AUTO,STRICT"}
    chosen = {"MKL_CBWR": "COMPATIBLE"}
    reproducible_math_env(chosen)
    assert chosen == {"MKL_CBWR": "COMPATIBLE"}

