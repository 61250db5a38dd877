"""Benchmarks that print tables: engine (issue 3) and data-parallel (issue 4).

Run from the repository root: ``python -m bench.bench_engine`` and ``python -m bench.bench_dp``.
Every measured job runs through the ``quantjob`` CLI in its own subprocess; see README.md.
"""
