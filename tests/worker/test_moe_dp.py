"""A Mixture-of-Experts model (DeepSeek-V3: MLA, grouped top-k, a shared expert, an MTP layer) under
dp_layer_wise: 1, 2 and 3 gloo ranks write byte-identical outputs with iter_smooth, flex_smooth_quant
and ssz (7 calibration samples: uneven shards; every expert's statistics reduce exactly), and a killed
run resumed equals an uninterrupted one (quant_errors.json's routed-token counts included)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from dp_runs import assert_same_tree, calibration, run_quantize, start_quantize
from test_smooth_dp import argv, write_config

from quantjob.worker.model.demo import build_demo_model

pytestmark = pytest.mark.slow

DYNAMIC = {"act": {"scope": "per_token"}, "weight": {"scope": "per_channel"}}
DYNAMIC_SSZ = {"act": {"scope": "per_token"}, "weight": {"scope": "per_channel", "method": "ssz"}}
STATIC = {"act": {"scope": "per_tensor", "symmetric": False}, "weight": {"scope": "per_channel"}}
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "iter_smooth": [{"type": "iter_smooth"}, {"type": "linear_quant", "qconfig": DYNAMIC}],
    "flex_smooth_quant, ssz": [{"type": "flex_smooth_quant"}, {"type": "linear_quant", "qconfig": DYNAMIC_SSZ}],
}
NUM_LAYERS = 6
STAGING = ".quantjob-staging"


def moe_model(root: Path, num_layers: int = 3) -> Path:
    return build_demo_model(root / f"deepseek-{num_layers}", family="deepseek_v3", num_layers=num_layers,
                            hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=4, seed=3)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_moe_output_does_not_depend_on_the_world_size(tmp_path: Path, name: str) -> None:
    model = moe_model(tmp_path)
    calib = calibration(tmp_path, samples=7)
    config = write_config(tmp_path, CONFIGS[name])
    outputs = {}
    for world, devices in ((1, "cpu"), (2, "cpu:0,1"), (3, "cpu:0,1,2")):
        outputs[world] = tmp_path / f"out-{world}"
        log = run_quantize(argv(model, outputs[world], calib, devices, config))
        if world > 1:
            assert f"[rank {world - 1}]" in log
    errors = json.loads((outputs[1] / "quant_errors.json").read_text())
    assert [entry["layer"] for entry in errors["experts"]] == [1, 2]
    assert all(sum(entry["routed_tokens"]) > 0 for entry in errors["experts"])
    for world in (2, 3):
        assert_same_tree(outputs[1], outputs[world])


def _committed(save: Path) -> int:
    count = 0
    while count < NUM_LAYERS and (save / STAGING / f"layer-{count:05d}.json").is_file():
        count += 1
    return count


def test_killed_moe_run_resumed_equals_uninterrupted_run(tmp_path: Path) -> None:
    from test_resume import _rank_pid

    model = moe_model(tmp_path, NUM_LAYERS)
    calib = calibration(tmp_path, samples=9)
    # static W8A8 attention and dense MLPs; the routed experts W8A8_DYNAMIC (vllm-ascend's only int8 MoE
    # scheme: ascendv1 refuses static experts), their smoothing statistics from every token
    config = write_config(tmp_path, [{"type": "iter_smooth"},
                                     {"type": "linear_quant", "qconfig": DYNAMIC, "include": ["*mlp.experts.*"]},
                                     {"type": "linear_quant", "qconfig": STATIC}])
    reference = tmp_path / "uninterrupted"
    run_quantize(argv(model, reference, calib, "cpu:0,1", config) + ["--calibrate_all_experts"])

    save = tmp_path / "interrupted"
    command = argv(model, save, calib, "cpu:0,1", config) + ["--calibrate_all_experts"]
    proc = start_quantize(command)
    deadline = time.monotonic() + 240
    while _committed(save) < 2:
        assert proc.poll() is None, f"the run ended before layer 2 was committed:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no layer commit seen in time"
        time.sleep(0.01)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    committed = _committed(save)
    assert 2 <= committed < NUM_LAYERS, f"{committed} layers committed: the kill came too late"

    log = run_quantize(command)
    assert f"resuming at layer {committed} of {NUM_LAYERS}" in log, log
    assert_same_tree(reference, save, same_layout=True)
