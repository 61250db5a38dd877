"""1, 2 and 3 gloo ranks write byte-identical output directories (docs/design.md, section 5).

7 calibration samples: uneven shards on 2 and 3 ranks ([0, 3, 6], [1, 4], [2, 5] on 3). Gemma3's
sliding layers (window 16) cut 5 of the 7 samples (14 to 49 tokens).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_runs import (
    assert_same_tree,
    calibration,
    quantize_argv,
    run_quantize,
    tiny_model,
    tree_digest,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
@pytest.mark.parametrize("quant_type", ["w8a8", "w8a16"])
def test_output_bytes_do_not_depend_on_world_size(tmp_path: Path, family: str, quant_type: str) -> None:
    model = tiny_model(tmp_path, family)
    calib = calibration(tmp_path, samples=7)
    outputs = {}
    for world, devices in ((1, "cpu"), (2, "cpu:0,1"), (3, "cpu:0,1,2")):
        outputs[world] = tmp_path / f"out-{world}"
        log = run_quantize(quantize_argv(model, outputs[world], calib, devices, quant_type))
        if world > 1:
            assert f"[rank {world - 1}]" in log  # the launcher really ran that many ranks
    files = tree_digest(outputs[1])
    assert {"quant_model_description.json", ".quantjob-complete"} <= set(files), sorted(files)
    assert any(name.endswith(".safetensors") for name in files), sorted(files)
    for world in (2, 3):
        assert_same_tree(outputs[1], outputs[world])
