"""Operator test fixtures: the kmock Kubernetes emulator with our resources, a way to run the operator."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import kmock as kmocklib
import pytest
from emulator import declare_resources, operator_running, operator_settings


@pytest.fixture()
def cluster(kmock: kmocklib.KubernetesEmulator) -> kmocklib.KubernetesEmulator:
    """kmock with the built-in resources and QuantJobs (with a status subresource)."""
    return declare_resources(kmock)


@pytest.fixture()
def start_operator(cluster: kmocklib.KubernetesEmulator) -> Callable[..., contextlib.AbstractAsyncContextManager[None]]:
    """``async with start_operator(**settings): ...`` runs kopf with our handlers against ``cluster``."""
    def start(**overrides: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return operator_running(operator_settings(cluster, **overrides))
    return start
