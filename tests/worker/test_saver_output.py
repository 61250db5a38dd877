"""The ascendv1 output directory: layout, splitting, atomic commit, resume, refusals, 1 vs 2 ranks.

Run as a script (``python test_saver_output.py RANK WORLD PORT SAVE MODEL``) it is one gloo rank of
the two-process test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from test_saver_ascend_tensors import reference_linear

from quantjob.api.modelslim import Saver
from quantjob.formats.ascendv1 import DESCRIPTION
from quantjob.worker.errors import QuantJobError
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.records import LayerOutput
from quantjob.worker.model.checkpoint import TensorInfo, read_header
from quantjob.worker.savers import OutputSaver, assemble, open_saver
from quantjob.worker.savers.ascend_tensors import ascend_tensors
from quantjob.worker.savers.assemble import COMPLETE, verify_complete
from quantjob.worker.savers.staging import STAGING_DIR

HIDDEN = 64
META_KEYS = {"version", "model_quant_type", "metadata", "group_size", "optional"}


def layer_output(index: int, *, dtype: torch.dtype = torch.bfloat16) -> LayerOutput:
    """A deterministic layer: static W8A8 q_proj (bias), dynamic o_proj, asymmetric W8A16 down_proj."""
    gen = torch.Generator().manual_seed(100 + index)
    prefix = f"model.layers.{index}"

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.1).to(dtype)

    calib = torch.randn(8, HIDDEN, generator=gen) + 0.2
    return LayerOutput(index=index, quantized=[
        reference_linear(f"{prefix}.self_attn.q_proj", rand(HIDDEN, HIDDEN), rand(HIDDEN), "W8A8", calib=calib),
        reference_linear(f"{prefix}.self_attn.o_proj", rand(HIDDEN, HIDDEN), None, "W8A8_DYNAMIC"),
        reference_linear(f"{prefix}.mlp.down_proj", rand(HIDDEN, 2 * HIDDEN) + 0.02, None, "W8A16",
                         symmetric=False),
    ], float_tensors={f"{prefix}.input_layernorm.weight": rand(HIDDEN) + 1,
                      f"{prefix}.post_attention_layernorm.weight": rand(HIDDEN) + 1})


def outer_tensors() -> dict[str, torch.Tensor]:
    """The source checkpoint's tensors outside the decoder layers."""
    gen = torch.Generator().manual_seed(7)
    return {
        "model.embed_tokens.weight": torch.randn(32, HIDDEN, generator=gen).to(torch.bfloat16),
        "model.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
        "lm_head.weight": torch.randn(32, HIDDEN, generator=gen).to(torch.bfloat16),
    }


def outer_source(directory: Path) -> dict[str, TensorInfo]:
    """``outer_tensors`` in a safetensors file under ``directory`` (written once), as the saver gets them."""
    file = directory / "source-outer.safetensors"
    if not file.exists():
        tmp = directory / f".tmp-{os.getpid()}-source-outer.safetensors"
        save_file(outer_tensors(), str(tmp))
        os.replace(tmp, file)
    return read_header(file)


def open_ascend(save: Path, model: Path, *, layers: int, run_id: str = "run-a", overwrite: bool = False,
                part_file_size: float | None = None, group: ProcessGroup | None = None,
                saver_type: str = "ascendv1_saver") -> OutputSaver:
    return open_saver(Saver(type=saver_type, part_file_size=part_file_size), save_path=save, model_dir=model,
                      run_id=run_id, group=group or ProcessGroup(), overwrite=overwrite,
                      num_layers=layers)


def run_all(save: Path, model: Path, *, layers: int = 3, start: int = 0, **kwargs: object) -> OutputSaver:
    saver = open_ascend(save, model, layers=layers, **kwargs)  # type: ignore[arg-type]
    try:
        for index in range(start, layers):
            saver.save(layer_output(index))
        saver.write_json("quant_errors.json", {"layers": layers})
        saver.finish(outer_source(save.parent))
    except BaseException:
        saver.abort()                        # as the runner does: temporaries go, the directory is released
        raise
    return saver


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def weight_tensors(save: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for file in sorted(save.glob("quant_model_weights*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  # safe_open handles cannot be iterated
                assert key not in found, f"{key} in two weight files"
                found[key] = handle.get_tensor(key)
    return found


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:  # type: ignore[no-untyped-def]
    return tiny_model("qwen2", 2)


def test_layout_description_and_copied_files(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir)
    names = {p.name for p in save.iterdir()}
    assert {"quant_model_weights.safetensors", DESCRIPTION, COMPLETE, "config.json", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json", "quant_errors.json"} <= names
    assert STAGING_DIR not in names and not [n for n in names if "tmp" in n]
    assert not list(save.glob("*.index.json"))
    assert (save / "config.json").read_bytes() == (model_dir / "config.json").read_bytes()
    assert (save / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()

    description = json.loads((save / DESCRIPTION).read_text())
    tensors = weight_tensors(save)
    assert set(description) - META_KEYS == set(tensors)          # bijection
    assert description["model_quant_type"] == "W8A8"
    assert description["version"] == "1.0.0" and description["group_size"] == 0
    expected: dict[str, tuple[str, torch.Tensor]] = {}
    for index in range(3):
        out = layer_output(index)
        for q in out.quantized:
            expected.update({t.name: (t.desc, t.tensor) for t in ascend_tensors(q)})
        expected.update({name: ("FLOAT", t) for name, t in out.float_tensors.items()})
    expected.update({name: ("FLOAT", t) for name, t in outer_tensors().items()})
    assert set(expected) == set(tensors)
    for name, (desc, tensor) in expected.items():
        assert description[name] == desc, name
        assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), name
    # float tensors are byte-identical to the source
    norm = tensors["model.layers.1.input_layernorm.weight"]
    assert norm.view(torch.int16).equal(layer_output(1).float_tensors["model.layers.1.input_layernorm.weight"]
                                        .view(torch.int16))


@pytest.mark.parametrize("chunk", [1000, 1 << 20])  # tensors over several reads, and each in one
def test_the_marker_holds_each_files_sha256(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                            chunk: int) -> None:
    """The read-back check hashes each chunk twice at once (the tensor's digest here, the file's on a
    second thread): the file's digest still covers every byte in order."""
    monkeypatch.setattr(assemble, "COPY_CHUNK", chunk)
    save = tmp_path / "out"
    run_all(save, model_dir, part_file_size=0.00001)  # several weight files
    marker = json.loads((save / COMPLETE).read_text())
    weights = sorted(name for name in marker["files"] if name.endswith(".safetensors"))
    assert len(weights) > 1
    assert verify_complete(save) is None
    assert [marker["files"][n] for n in weights] == [hashlib.sha256((save / n).read_bytes()).hexdigest()
                                                     for n in weights]


def test_part_file_size_splits_with_an_index(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir, part_file_size=2e-5)                 # ~21 KB per part
    index = json.loads((save / "quant_model_weights.safetensors.index.json").read_text())
    parts = sorted(save.glob("quant_model_weights-*.safetensors"))
    assert len(parts) > 2
    assert [p.name for p in parts] == [f"quant_model_weights-{i:05d}-of-{len(parts):05d}.safetensors"
                                       for i in range(1, len(parts) + 1)]
    tensors = weight_tensors(save)
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    for part in parts:
        with safe_open(str(part), framework="pt") as handle:
            assert {k for k, v in index["weight_map"].items() if v == part.name} == set(handle.keys())
    description = json.loads((save / DESCRIPTION).read_text())
    assert set(description) - META_KEYS == set(tensors)


def test_resume_verifies_committed_layers_and_matches_an_uninterrupted_run(
        tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    clean = tmp_path / "clean"
    run_all(clean, model_dir, layers=5)

    save = tmp_path / "out"
    first = open_ascend(save, model_dir, layers=5)
    for index in range(3):
        first.save(layer_output(index))
    first.abort()                                                  # the pod dies here
    assert not (save / DESCRIPTION).exists() and not (save / COMPLETE).exists()

    with caplog.at_level(logging.INFO, logger="quantjob.worker.savers"):
        second = open_ascend(save, model_dir, layers=5)
    assert second.committed_layers() == 3
    assert "3 of 5 layers already committed and verified" in caplog.text
    for index in range(3):                                          # replayed records: same bits
        loaded, original = second.load_layer(index), layer_output(index)
        assert loaded.index == index and list(loaded.float_tensors) == list(original.float_tensors)
        for name, tensor in original.float_tensors.items():
            assert torch.equal(loaded.float_tensors[name], tensor) and loaded.float_tensors[name].dtype == tensor.dtype
        for got, want in zip(loaded.quantized, original.quantized, strict=True):
            assert (got.name, got.scheme, got.dtype, got.group_size) == (want.name, want.scheme, want.dtype,
                                                                        want.group_size)
            for field in ("weight_q", "weight_scale", "weight_offset", "bias", "input_scale", "input_offset"):
                a, b = getattr(got, field), getattr(want, field)
                assert (a is None) == (b is None), field
                if a is not None:
                    assert a.dtype == b.dtype and torch.equal(a, b), field
    with pytest.raises(ValueError, match="not committed"):
        second.load_layer(3)
    for index in range(3, 5):
        second.save(layer_output(index))
    second.write_json("quant_errors.json", {"layers": 5})
    second.finish(outer_source(save.parent))
    assert tree(save) == tree(clean)


def test_corrupted_layer_is_detected_and_redone(tmp_path: Path, model_dir: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    save = tmp_path / "out"
    first = open_ascend(save, model_dir, layers=4)
    for index in range(3):
        first.save(layer_output(index))
    first.abort()                                                  # the pod dies here
    staged = save / STAGING_DIR / "layer-00001.safetensors"
    data = bytearray(staged.read_bytes())
    data[-3] ^= 0xFF                                                # flip bits in the last tensor
    staged.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="quantjob.worker.savers"):
        second = open_ascend(save, model_dir, layers=4)
    assert second.committed_layers() == 1
    assert "checksum mismatch" in caplog.text
    for index in range(1, 4):
        second.save(layer_output(index))
    second.write_json("quant_errors.json", {"layers": 4})
    second.finish(outer_source(save.parent))
    clean = tmp_path / "clean"
    run_all(clean, model_dir, layers=4)
    assert tree(save) == tree(clean)


def test_a_different_spec_is_refused(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    first = open_ascend(save, model_dir, layers=3, run_id="spec-a")
    first.save(layer_output(0))
    first.abort()
    with pytest.raises(QuantJobError, match=rf"{STAGING_DIR}.*different spec.*--overwrite"):
        open_ascend(save, model_dir, layers=3, run_id="spec-b")
    assert open_ascend(save, model_dir, layers=3, run_id="spec-a").committed_layers() == 1
    fresh = open_ascend(save, model_dir, layers=3, run_id="spec-b", overwrite=True)
    assert fresh.committed_layers() == 0


def test_a_complete_output_is_refused_without_overwrite(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    run_all(save, model_dir)
    before = tree(save)
    with pytest.raises(QuantJobError, match=rf"{save}.*already holds a complete.*--overwrite"):
        open_ascend(save, model_dir, layers=3, run_id="run-other")   # (the same run is complete: test_saver_safety)
    assert tree(save) == before                                     # nothing touched
    run_all(save, model_dir, overwrite=True, run_id="run-b")
    after = tree(save)
    assert {k: v for k, v in after.items() if k != COMPLETE} == {k: v for k, v in before.items() if k != COMPLETE}


def test_an_interrupted_finish_never_looks_complete(tmp_path: Path, model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.formats.ascendv1 import writer as format_ascendv1

    save = tmp_path / "out"

    def crash(*args: object, **kwargs: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(format_ascendv1, "group_size_of", crash)  # after the weight files, before the description
    with pytest.raises(OSError, match="disk full"):
        run_all(save, model_dir)
    assert (save / "quant_model_weights.safetensors").exists()
    assert not (save / DESCRIPTION).exists() and not (save / COMPLETE).exists()
    monkeypatch.undo()
    again = open_ascend(save, model_dir, layers=3)                 # the restarted pod
    assert again.committed_layers() == 3
    again.write_json("quant_errors.json", {"layers": 3})
    again.finish(outer_source(save.parent))
    clean = tmp_path / "clean"
    run_all(clean, model_dir)
    assert tree(save) == tree(clean)


def test_a_finish_cut_between_description_and_marker_is_finished_again(tmp_path: Path, model_dir: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the marker means complete: a restarted pod of the same run finishes; another run is refused."""
    from quantjob.worker.savers import assemble

    save = tmp_path / "out"
    real = assemble.atomic_write_bytes

    def no_marker(path: Path, data: bytes) -> None:
        if path.name == COMPLETE:
            raise OSError("node lost")
        real(path, data)

    monkeypatch.setattr(assemble, "atomic_write_bytes", no_marker)
    with pytest.raises(OSError, match="node lost"):
        run_all(save, model_dir)
    monkeypatch.undo()
    assert (save / DESCRIPTION).exists() and not (save / COMPLETE).exists()
    with pytest.raises(QuantJobError, match=rf"{DESCRIPTION}\) from another run.*--overwrite"):
        open_ascend(save, model_dir, layers=3, run_id="run-b")
    assert (save / DESCRIPTION).exists()                              # the refusal touched nothing
    again = open_ascend(save, model_dir, layers=3)                   # the restarted pod of the same run
    assert again.committed_layers() == 3
    assert not (save / DESCRIPTION).exists()                         # never complete-looking while redone
    again.write_json("quant_errors.json", {"layers": 3})
    again.finish(outer_source(save.parent))
    clean = tmp_path / "clean"
    run_all(clean, model_dir)
    assert tree(save) == tree(clean)


def test_the_plan_shares_the_bytes_out_without_gaps_or_overlaps(tmp_path: Path, model_dir: Path) -> None:
    from quantjob.worker.savers.assemble import plan_output

    save = tmp_path / "out"
    saver = open_ascend(save, model_dir, layers=4)
    for index in range(4):
        saver.save(layer_output(index))
    saver.abort()                                                  # (commits are written in the background)
    source = outer_source(tmp_path)
    plan = plan_output(save / STAGING_DIR, num_layers=4, source_tensors=source, part_file_size=3e-5, world_size=3,
                       weights_prefix="quant_model_weights")
    assert len(plan.parts) > 1
    for part in plan.parts:
        end = len(part.header)
        for item, offset in part.tensors:               # contiguous, in header order
            assert offset == end
            end += item.spec.nbytes
        assert end == part.size
    writers: dict[int, int] = {}
    for item in plan.tensors:
        if item.sha256 is None:                         # copied from the source checkpoint
            assert item.source == source[item.spec.name]
        else:                                           # written by the layer's owner
            assert item.writer == int(item.spec.name.split(".")[2]) % 3
        writers[item.writer] = writers.get(item.writer, 0) + item.spec.nbytes
    assert sorted(writers) == [0, 1, 2]
    # the two large source tensors go to different ranks
    assert len({item.writer for item in plan.tensors
                if item.spec.name in ("model.embed_tokens.weight", "lm_head.weight")}) == 2


def test_a_staged_tensor_changed_before_the_finish_is_caught(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "out"
    saver = open_ascend(save, model_dir, layers=2)
    for index in range(2):
        saver.save(layer_output(index))
    saver.abort()                        # waits for the commit in flight; the saver stays usable
    staged = save / STAGING_DIR / "layer-00001.safetensors"
    data = bytearray(staged.read_bytes())
    data[-3] ^= 0xFF
    staged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"staged tensor .*layer-00001.safetensors no longer matches its checksum"):
        saver.finish(outer_source(tmp_path))
    saver.abort()
    assert not (save / DESCRIPTION).exists() and not (save / COMPLETE).exists()
    assert not list(save.glob(".quantjob-tmp-*"))


def test_bytes_lost_by_the_output_volume_are_caught_before_the_commit(
        tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.worker.savers import assemble

    real = assemble._copy_tensor

    def lossy(item: assemble.PlannedTensor, out_fd: int, offset: int) -> str:
        digest = real(item, out_fd, offset)
        if item.spec.name == "model.layers.1.self_attn.q_proj.weight":  # a volume that dropped this range
            os.pwrite(out_fd, bytes(item.spec.nbytes), offset)
        return digest

    monkeypatch.setattr(assemble, "_copy_tensor", lossy)
    with pytest.raises(ValueError, match=r"q_proj.weight' does not hold the bytes its rank wrote.*POSIX shared"):
        run_all(tmp_path / "out", model_dir)
    assert not (tmp_path / "out" / DESCRIPTION).exists() and not (tmp_path / "out" / COMPLETE).exists()


def test_a_failed_background_commit_fails_the_next_save_or_the_finish(
        tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.worker.savers import directory

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(directory, "write_record", disk_full)
    saver = open_ascend(tmp_path / "a", model_dir, layers=2)
    saver.save(layer_output(0))                                     # fails on the writer thread
    with pytest.raises(QuantJobError, match=r"output volume is full: No space left on device while writing .*--save_path"):
        saver.save(layer_output(1))
    saver.abort()
    last = open_ascend(tmp_path / "b", model_dir, layers=1)
    last.save(layer_output(0))
    with pytest.raises(QuantJobError, match="No space left on device"):
        last.finish(outer_source(tmp_path))
    last.abort()
    assert not (tmp_path / "b" / DESCRIPTION).exists()


def test_an_unwritable_save_path_is_named(tmp_path: Path, model_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(QuantJobError, match=rf"save path {blocker / 'out'} is not writable.*--save_path"):
        open_ascend(blocker / "out", model_dir, layers=1)
    with pytest.raises(QuantJobError, match=rf"save path {blocker} is a file"):
        open_ascend(blocker, model_dir, layers=1)
    with pytest.raises(QuantJobError, match="is the model directory"):
        open_ascend(model_dir, model_dir, layers=1)


def test_an_unimplemented_saver_is_refused(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(QuantJobError, match="not implemented"):
        open_ascend(tmp_path / "o", model_dir, layers=1, saver_type="mindie_format_saver")


def _rank_main(rank: int, world: int, port: int, save: Path, model: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        run_all(save, model, layers=5, group=ProcessGroup(rank, world), saver_type="distributed_ascendv1_saver",
                part_file_size=3e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_gloo_ranks_write_the_same_files_as_one(tmp_path: Path, model_dir: Path) -> None:
    from quantjob.worker.group.launcher import free_port

    single = tmp_path / "single"
    run_all(single, model_dir, layers=5, part_file_size=3e-5)
    save, port = tmp_path / "dp", free_port()
    assert len(list(single.glob("quant_model_weights-*.safetensors"))) > 1
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), "2", str(port), str(save), str(model_dir)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for rank in range(2)]
    outputs = [p.communicate(timeout=150)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert tree(save) == tree(single)


if __name__ == "__main__":
    _rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
