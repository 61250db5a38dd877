"""Observers: per-channel input ranges through hooks, reduction, and minmax parameters."""

from __future__ import annotations

import pytest
import torch

from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.observers import ActivationStats, minmax_activation, observe_inputs, reduce_stats


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
    reduced = reduce_stats(stats, ProcessGroup())
    assert torch.equal(reduced["m.lin"].maximum, stats["m.lin"].maximum)


def test_minmax_activation_is_per_tensor_asymmetric() -> None:
    stats = ActivationStats(torch.tensor([-1.0, -0.5]), torch.tensor([2.0, 3.0]))
    scale, offset = minmax_activation(stats, 8, symmetric=False)
    assert scale.shape == (1,) and scale.item() == pytest.approx(4.0 / 255)
    assert offset.item() == round(1.0 / (4.0 / 255)) - 128


def test_unobserved_linear_is_an_error() -> None:
    with pytest.raises(ValueError, match="no activations"):
        minmax_activation(ActivationStats.empty(3, torch.device("cpu")), 8, False)


def test_linears_fed_the_same_tensor_share_one_reduction(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.worker.loop import observers

    calls: list[int] = []
    real = observers.channel_range

    def counted(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        calls.append(id(x))
        return real(x)

    monkeypatch.setattr(observers, "channel_range", counted)
    q, k, o = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)
    x, y = torch.randn(1, 6, 4), torch.randn(1, 6, 4)
    with observe_inputs({"q": q, "k": k, "o": o}) as stats:
        q(x)
        k(x)                   # the same tensor: reduced once
        o(y)                   # another tensor: reduced again
        q(x.clone())           # equal values, another tensor: reduced again
    assert len(calls) == 3
    for name, seen in (("q", x), ("k", x), ("o", y)):
        flat = seen.reshape(-1, 4)
        assert torch.equal(stats[name].minimum, flat.amin(0)) and torch.equal(stats[name].maximum, flat.amax(0))


def test_reduction_over_ranks_is_one_collective_with_exact_bits() -> None:
    class Recording(ProcessGroup):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[torch.Tensor] = []

        def all_min(self, tensor: torch.Tensor) -> torch.Tensor:
            self.calls.append(tensor)
            return tensor

    stats = {"b": ActivationStats(torch.tensor([-1.5, 0.0]), torch.tensor([2.0, -0.0])),
             "a": ActivationStats(torch.tensor([-3.0]), torch.tensor([float("inf")]))}
    group = Recording()
    reduced = reduce_stats(stats, group)
    assert len(group.calls) == 1 and list(reduced) == ["a", "b"]
    for name, stat in stats.items():
        for field in ("minimum", "maximum"):
            got, want = getattr(reduced[name], field), getattr(stat, field)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (name, field)  # same bits
