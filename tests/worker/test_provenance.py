"""``quant_provenance.json``: what made an output, and nothing that changes when the same run resumes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from quantjob.cli import main
from quantjob.worker.model.checkpoint import file_fingerprint


def test_the_provenance_names_config_model_calibration_layout_and_versions(
        tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    model, calib, out = tiny_model("llama", 2), calib_jsonl(4), tmp_path / "out"
    assert main(["quantize", "--model_path", str(model), "--save_path", str(out), "--quant_type", "w8a8_dynamic",
                 "--calib_file", str(calib), "--calib_samples", "4", "--max_length", "32"]) == 0
    record = json.loads((out / "quant_provenance.json").read_text())
    marker = json.loads((out / ".quantjob-complete").read_text())
    assert record["run_id"] == marker["run_id"] and "quant_provenance.json" in marker["files"]
    config = record["config"]
    assert config["spec"]["runner"] == "layer_wise" and config["spec"]["save"][0]["type"] == "ascendv1_saver"
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    assert record["config_sha256"] == hashlib.sha256(canonical).hexdigest()
    assert record["model"]["weights"] == [{"file": "model.safetensors",
                                           "fingerprint": file_fingerprint(model / "model.safetensors")}]
    assert len(record["calibration"]["token_ids_sha256"]) == 64 and record["calibration"]["samples"] == 4
    assert record["options"]["calib_samples"] == 4 and record["options"]["max_length"] == 32
    assert (record["world_size"], record["runner"], record["device_kind"]) == (1, "layer_wise", "cpu")
    assert record["threads_per_rank"] == torch.get_num_threads()
    assert record["ranks"] == [{"rank": 0, "device": "cpu", "threads": torch.get_num_threads()}]
    versions = record["versions"]
    assert versions["torch"] == torch.__version__ and versions["quantjob"] and versions["transformers"]
    text = (out / "quant_provenance.json").read_text()
    assert str(tmp_path) not in text and str(model) not in text      # no paths: resumed runs write the same file
