"""The worker refuses, before any compute, an asymmetric shift that vllm-ascend would drop: a bias
on a linear quantized without static activations, or a norm bias the family's norm ignores."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from quantjob.api.check import resolve
from quantjob.api.modelslim import ModelslimConfig
from quantjob.families import family_named
from quantjob.worker.errors import QuantJobError
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop import runner as runner_module
from quantjob.worker.loop.runner import WorkerJob, run_quantization
from quantjob.worker.model.model_config import read_model_config

STATIC = {"act": {"scope": "per_tensor", "symmetric": False}, "weight": {"scope": "per_channel"}}
DYNAMIC = {"act": {"scope": "per_token"}, "weight": {"scope": "per_channel"}}


def _job(model: Path, calib: Path, tmp_path: Path, process: list[dict[str, Any]]) -> WorkerJob:
    resolution = resolve(ModelslimConfig.model_validate({"spec": {"process": process}}), 1)
    assert resolution.ok and resolution.config is not None, resolution.problems
    return WorkerJob(model_path=model, save_path=tmp_path / "out", config=resolution.config, calib_file=calib,
                     calib_samples=4, max_length=32)


def test_dynamic_consumers_of_a_shifted_norm_are_refused(tiny_model: Any, calib_jsonl: Any, memory_saver: Any,
                                                         tmp_path: Path) -> None:
    process = [{"type": "iter_smooth", "symmetric": False},
               {"type": "linear_quant", "qconfig": STATIC, "include": ["*self_attn*"]},
               {"type": "linear_quant", "qconfig": DYNAMIC, "include": ["*mlp*"]}]
    with pytest.raises(QuantJobError) as caught:
        run_quantization(_job(tiny_model("llama"), calib_jsonl(), tmp_path, process), ProcessGroup(), torch.device("cpu"),
                         open_saver_fn=memory_saver)
    message = str(caught.value)
    assert "spec.process[0].symmetric" in message and "model.layers.0.mlp.gate_proj" in message
    assert "3 more linears" in message  # gate and up of both layers
    assert memory_saver.last is None  # refused before the output was opened


def test_own_biases_and_excluded_norms_are_fine(tiny_model: Any, calib_jsonl: Any, memory_saver: Any,
                                               tmp_path: Path) -> None:
    # qwen2's q/k/v have biases of their own (vLLM keeps them); the MLP's norm is not smoothed
    process = [{"type": "iter_smooth", "symmetric": False, "exclude": ["*post_attention_layernorm"]},
               {"type": "linear_quant", "qconfig": DYNAMIC}]
    job = _job(tiny_model("qwen2"), calib_jsonl(), tmp_path, process)
    runner_module.preflight(job, runner_module.Checkpoint(job.model_path), family_named("qwen2").adapter,
                            read_model_config(job.model_path))


def test_a_family_whose_norm_takes_no_bias_is_refused(tiny_model: Any, calib_jsonl: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    process = [{"type": "iter_smooth", "symmetric": False}, {"type": "linear_quant", "qconfig": STATIC}]
    job = _job(tiny_model("llama"), calib_jsonl(), tmp_path, process)
    no_bias = dataclasses.replace(family_named("llama").adapter, norm_bias=False)
    with pytest.raises(QuantJobError, match="norm of llama models does not apply"):
        runner_module.preflight(job, runner_module.Checkpoint(job.model_path), no_bias, read_model_config(job.model_path))
    runner_module.preflight(job, runner_module.Checkpoint(job.model_path), family_named("llama").adapter,
                            read_model_config(job.model_path))
