"""Operator test fixtures: the kmock Kubernetes emulator with our resources, a way to run the operator."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import kmock as kmocklib
import pytest
from emulator import QUANTJOBS, operator_running, operator_settings

from quantjob.api.resource import KIND


@pytest.fixture()
def cluster(kmock: kmocklib.KubernetesEmulator) -> kmocklib.KubernetesEmulator:
    """kmock with the built-in resources and QuantJobs (with a status subresource)."""
    kmock.resources.load_bundled()
    kmock.resources[QUANTJOBS] = kmocklib.ResourceInfo(
        kind=KIND, singular="quantjob", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"})
    return kmock


@pytest.fixture()
def start_operator(cluster: kmocklib.KubernetesEmulator) -> Callable[..., contextlib.AbstractAsyncContextManager[None]]:
    """``async with start_operator(**settings): ...`` runs kopf with our handlers against ``cluster``."""
    def start(**overrides: Any) -> contextlib.AbstractAsyncContextManager[None]:
        return operator_running(operator_settings(cluster, **overrides))
    return start
