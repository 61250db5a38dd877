"""compressed_tensors_saver: tensors the library's own decompressor reads back exactly, the output
layout, 1 vs 2 ranks byte-identical, resume equal to an uninterrupted run.

Run as a script (``python test_saver_compressed_tensors.py RANK WORLD PORT SAVE MODEL``) it is one
gloo rank of the two-process test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
from test_saver_ascend_tensors import reference_linear
from test_saver_output import (
    layer_output,
    open_ascend,
    outer_source,
    outer_tensors,
    run_all,
    tree,
)

from quantjob.formats.compressed_tensors.writer import linear_tensors, scheme_for
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.records import QuantizedLinear
from quantjob.worker.savers.assemble import COMPLETE
from quantjob.worker.savers.staging import STAGING_DIR

CT = "compressed_tensors_saver"


def _record(scheme: str, *, symmetric: bool = True, group_size: int | None = None, bias: bool = False,
            dtype: torch.dtype = torch.bfloat16, act_symmetric: bool = False) -> QuantizedLinear:
    gen = torch.Generator().manual_seed(11)
    weight = (torch.randn(48, 64, generator=gen) * 0.1).to(dtype)
    b = (torch.randn(48, generator=gen) * 0.5).to(dtype) if bias else None
    calib = torch.randn(16, 64, generator=gen) + (0.0 if act_symmetric else 0.3)
    record = reference_linear("m.layers.0.proj", weight, b, scheme, calib=calib if scheme == "W8A8" else None,  # type: ignore[arg-type]
                              symmetric=symmetric, group_size=group_size)
    if scheme == "W8A8" and act_symmetric:
        record.input_offset = torch.zeros(1)
    return record


CASES = [
    ("W8A8", {"bias": True}),
    ("W8A8", {"act_symmetric": True}),
    ("W8A8_DYNAMIC", {}),
    ("W8A16", {}),
    ("W8A16", {"symmetric": False}),
    ("W8A16", {"group_size": 16}),
    ("W4A16", {"group_size": 16}),
    ("W4A16", {"group_size": 16, "symmetric": False}),
    ("W4A16", {}),
    ("W4A16", {"dtype": torch.float16, "group_size": 32}),
]


@pytest.mark.parametrize(("scheme", "options"), CASES)
def test_the_library_decompresses_exactly_what_the_record_says(scheme: str, options: dict) -> None:
    from compressed_tensors.compressors import BaseCompressor

    q = _record(scheme, **options)
    tensors = linear_tensors(q)
    local = {name.removeprefix(f"{q.name}."): tensor for name, tensor in tensors.items()}
    packed = scheme in ("W8A16", "W4A16")
    expected = {"weight_packed", "weight_shape", "weight_scale"} if packed else {"weight", "weight_scale"}
    if not q.symmetric_weights():
        expected.add("weight_zero_point")
    if scheme == "W8A8":
        expected |= {"input_scale"} | (set() if q.symmetric_activations() else {"input_zero_point"})
    if q.bias is not None:
        expected.add("bias")
    assert set(local) == expected
    assert local["weight_scale"].dtype == q.dtype and local["weight_scale"].shape == q.weight_scale.shape
    if packed:
        assert local["weight_packed"].dtype == torch.int32
        assert local["weight_packed"].shape == (48, 64 * (4 if scheme == "W4A16" else 8) // 32)
        assert local["weight_shape"].tolist() == [48, 64]
    else:
        assert torch.equal(local["weight"], q.weight_q)
    if scheme == "W8A8":
        assert local["input_scale"].dtype == q.dtype and local["input_scale"].shape == (1,)
        if "input_zero_point" in local:
            assert local["input_zero_point"].dtype == torch.int8
            assert local["input_zero_point"].item() == int(q.input_offset.item())
    scheme_obj = scheme_for(q.scheme, q.group_size, q.symmetric_weights(), q.symmetric_activations())
    compressor = BaseCompressor.get_value_from_registry(scheme_obj.format.value)  # type: ignore[union-attr]
    back = compressor.decompress(dict(local), scheme_obj)["weight"]
    columns = 64 // q.weight_scale.shape[1]
    scale = q.weight_scale.to(q.dtype).float().repeat_interleave(columns, dim=1)
    offset = q.weight_offset.float().repeat_interleave(columns, dim=1)
    want = (q.weight_q.float() - offset) * scale
    assert back.dtype == q.dtype
    assert torch.allclose(back.float(), want.to(q.dtype).float(), rtol=0, atol=0), scheme


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:  # type: ignore[no-untyped-def]
    return tiny_model("qwen2", 2)


def _tensors(save: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for file in sorted(save.glob("model*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            found.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    return found


def test_layout_and_config(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir, saver_type=CT)
    names = {p.name for p in save.iterdir()}
    assert {"model.safetensors", "config.json", COMPLETE, "tokenizer.json", "quant_errors.json"} <= names
    assert "quant_model_description.json" not in names and STAGING_DIR not in names
    config = json.loads((save / "config.json").read_text())
    source = json.loads((model_dir / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "quantization_config"} == source
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["quantization_status"] == "compressed"
    assert qc["format"] == "mixed-precision"                      # int-quantized W8A8 + pack-quantized W8A16
    groups = [(name, group["format"], group["targets"]) for name, group in qc["config_groups"].items()]
    assert groups == [(f"group_{i}", fmt, [f"model.layers.{layer}.{linear}" for layer in range(3)])
                      for i, (fmt, linear) in enumerate([("int-quantized", "self_attn.q_proj"),
                                                        ("int-quantized", "self_attn.o_proj"),
                                                        ("pack-quantized", "mlp.down_proj")])]
    assert qc["config_groups"]["group_0"]["input_activations"]["strategy"] == "tensor"
    assert qc["config_groups"]["group_1"]["input_activations"]["strategy"] == "token"
    assert qc["config_groups"]["group_2"]["weights"]["symmetric"] is False
    assert qc["ignore"] == ["lm_head"]
    tensors = _tensors(save)
    expected: dict[str, torch.Tensor] = {}
    for index in range(3):
        out = layer_output(index)
        for q in out.quantized:
            expected.update(linear_tensors(q))
        expected.update(out.float_tensors)
    expected.update(outer_tensors())
    assert set(tensors) == set(expected)
    for name, tensor in expected.items():
        assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), name


def test_part_split_uses_the_hugging_face_names(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir, saver_type=CT, part_file_size=2e-5)
    parts = sorted(save.glob("model-*.safetensors"))
    assert len(parts) > 2 and parts[0].name == f"model-00001-of-{len(parts):05d}.safetensors"
    index = json.loads((save / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(_tensors(save)) and set(index["weight_map"].values()) == \
        {p.name for p in parts}


def test_resume_equals_an_uninterrupted_run(tmp_path: Path, model_dir: Path) -> None:
    clean = tmp_path / "clean"
    run_all(clean, model_dir, layers=5, saver_type=CT)
    save = tmp_path / "out"
    first = open_ascend(save, model_dir, layers=5, saver_type=CT)
    for index in range(3):
        first.save(layer_output(index))
    first.abort()                                                  # the pod dies here
    second = open_ascend(save, model_dir, layers=5, saver_type=CT)
    assert second.committed_layers() == 3
    for index in range(3):                                          # replayed records: same bits
        got, want = second.load_layer(index), layer_output(index)
        for a, b in zip(got.quantized, want.quantized, strict=True):
            for field in ("weight_q", "weight_scale", "weight_offset", "bias", "input_scale", "input_offset"):
                x, y = getattr(a, field), getattr(b, field)
                assert (x is None) == (y is None) and (x is None or (x.dtype == y.dtype and torch.equal(x, y)))
            assert (a.symmetric_weights(), a.symmetric_activations()) == (b.symmetric_weights(),
                                                                        b.symmetric_activations())
    for index in range(3, 5):
        second.save(layer_output(index))
    second.write_json("quant_errors.json", {"layers": 5})
    second.finish(outer_source(save.parent))
    assert tree(save) == tree(clean)


def _rank_main(rank: int, world: int, port: int, save: Path, model: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        run_all(save, model, layers=5, group=ProcessGroup(rank, world), saver_type="distributed_compressed_tensors_saver",
                part_file_size=3e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_gloo_ranks_write_the_same_files_as_one(tmp_path: Path, model_dir: Path) -> None:
    from quantjob.worker.group.launcher import free_port

    single = tmp_path / "single"
    run_all(single, model_dir, layers=5, part_file_size=3e-5, saver_type=CT)
    assert len(list(single.glob("model-*.safetensors"))) > 1
    save, port = tmp_path / "dp", free_port()
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), "2", str(port), str(save), str(model_dir)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for rank in range(2)]
    outputs = [p.communicate(timeout=150)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert tree(save) == tree(single)


if __name__ == "__main__":
    _rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
