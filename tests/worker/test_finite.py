"""NaN and infinity in statistics, parameters and errors stop the run with the tensor's name and
layer (issue 14, item 6); the checks read only values every rank shares."""

from __future__ import annotations

import pytest
import torch

from quantjob.worker.errors import QuantJobError
from quantjob.worker.loop.finite import (
    check_activations,
    check_error,
    check_records,
    is_finite,
)
from quantjob.worker.loop.observers import ActivationStats
from quantjob.worker.loop.quantizers import quantize_weight
from quantjob.worker.loop.records import QuantizedLinear


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("value", "finite"), [(1.0, True), (float("nan"), False), (float("inf"), False),
                                               (float("-inf"), False)])
def test_is_finite(dtype: torch.dtype, value: float, finite: bool) -> None:
    tensor = torch.randn(64, 33).to(dtype)
    tensor[17, 5] = value
    assert is_finite(tensor) is finite
    assert is_finite(torch.tensor([1, 2], dtype=torch.int8)) and is_finite(torch.empty(0))


def _stats(lo: list[float], hi: list[float]) -> ActivationStats:
    return ActivationStats(torch.tensor(lo), torch.tensor(hi))


def test_non_finite_activations_name_the_linear_and_layer() -> None:
    fine = _stats([-1.0, -2.0], [1.0, 2.0])
    unobserved = ActivationStats.empty(2, torch.device("cpu"))  # no token reached it: its own message later
    check_activations({"a": fine, "b": unobserved}, 3)
    for bad in (_stats([float("nan"), -2.0], [1.0, 2.0]), _stats([-1.0, -2.0], [1.0, float("inf")]),
                _stats([float("-inf"), -2.0], [1.0, 2.0])):
        with pytest.raises(QuantJobError, match=r"inputs of model\.layers\.3\.mlp\.down_proj \(decoder layer 3\)"):
            check_activations({"a": fine, "model.layers.3.mlp.down_proj": bad}, 3)


def _record(scale: float = 0.5) -> QuantizedLinear:
    q, weight_scale, offset = quantize_weight(torch.randn(4, 8), "per_channel", 8, True)
    return QuantizedLinear("model.layers.1.self_attn.q_proj", "W8A8", q, weight_scale, offset, None, torch.float32,
                           input_scale=torch.tensor([scale]), input_offset=torch.tensor([0.0]))


def test_non_finite_parameters_name_the_field_and_linear() -> None:
    check_records([_record()], 1)
    with pytest.raises(QuantJobError, match=r"input_scale of model\.layers\.1\.self_attn\.q_proj \(decoder layer 1\)"):
        check_records([_record(float("inf"))], 1)


def test_a_non_finite_layer_error_stops_the_run() -> None:
    check_error(None, 2)
    check_error(0.01, 2)
    with pytest.raises(QuantJobError, match="decoder layer 2"):
        check_error(float("nan"), 2)
