"""Operator test fixtures: the kmock Kubernetes emulator with our resources, a way to run the operator."""

from emulator import cluster, start_operator  # noqa: F401  # fixtures, shared with tests/e2e
