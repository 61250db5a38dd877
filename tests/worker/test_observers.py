"""Observers: per-channel input ranges through hooks, reduction, and minmax parameters."""

from __future__ import annotations

import pytest
import torch

from quantjob.worker.distributed import Group
from quantjob.worker.observers import ActivationStats, minmax_activation, observe_inputs, reduce_stats


def test_hooks_record_per_channel_ranges_and_are_removed() -> None:
    linear = torch.nn.Linear(4, 2)
    a, b = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    with observe_inputs({"m.lin": linear}) as stats:
        linear(a)
        linear(b)
    both = torch.cat([a, b], dim=1).reshape(-1, 4)
    assert torch.equal(stats["m.lin"].minimum, both.amin(0))
    assert torch.equal(stats["m.lin"].maximum, both.amax(0))
    assert not linear._forward_pre_hooks
    reduced = reduce_stats(stats, Group())
    assert torch.equal(reduced["m.lin"].maximum, stats["m.lin"].maximum)


def test_minmax_activation_is_per_tensor_asymmetric() -> None:
    stats = ActivationStats(torch.tensor([-1.0, -0.5]), torch.tensor([2.0, 3.0]))
    scale, offset = minmax_activation(stats, 8, symmetric=False)
    assert scale.shape == (1,) and scale.item() == pytest.approx(4.0 / 255)
    assert offset.item() == round(1.0 / (4.0 / 255)) - 128


def test_unobserved_linear_is_an_error() -> None:
    with pytest.raises(ValueError, match="no activations"):
        minmax_activation(ActivationStats.empty(3, torch.device("cpu")), 8, False)
