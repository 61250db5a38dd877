"""Several savers in one config: one run writes an ascendv1 and a compressed-tensors directory.

With more than one ``spec.save`` entry each saver writes its own sub-directory of the output (its
``save_directory``, or its format's name): the same files as a run with that saver alone, from 1 or
2 ranks, resumed per saver (a saver ahead of the other skips what it holds; one already complete
is left alone).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from dp_runs import assert_same_tree, calibration, run_quantize, tiny_model, tree_digest
from test_saver_output import layer_output, outer_source, run_all, tree

from quantjob.api.modelslim import Saver
from quantjob.worker.errors import QuantJobError
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.savers import OutputSaver, open_savers
from quantjob.worker.savers.assemble import COMPLETE
from quantjob.worker.savers.staging import STAGING_DIR

BOTH = [Saver(type="ascendv1_saver"), Saver(type="compressed_tensors_saver")]


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:  # type: ignore[no-untyped-def]
    return tiny_model("qwen2", 2)


def _open(save: Path, model: Path, layers: int, savers: list[Saver] = BOTH) -> OutputSaver:
    return open_savers(savers, save_path=save, model_dir=model, run_id="run-a", group=ProcessGroup(),
                       overwrite=False, num_layers=layers)


def _finish(saver: OutputSaver, layers: int, start: int, source: Path) -> None:
    for index in range(start, layers):
        saver.save(layer_output(index))
    saver.write_json("quant_errors.json", {"layers": layers})
    saver.finish(outer_source(source))


def test_one_run_writes_each_format_into_its_own_directory(tmp_path: Path, model_dir: Path) -> None:
    save = tmp_path / "both"
    _finish(_open(save, model_dir, 3), 3, 0, tmp_path)
    assert sorted(p.name for p in save.iterdir()) == ["ascendv1", "compressed_tensors"]
    run_all(tmp_path / "ascend", model_dir)
    run_all(tmp_path / "ct", model_dir, saver_type="compressed_tensors_saver")
    assert tree(save / "ascendv1") == tree(tmp_path / "ascend")
    assert tree(save / "compressed_tensors") == tree(tmp_path / "ct")
    again = _open(save, model_dir, 3)                                   # the same run: nothing to do
    assert again.already_complete and again.committed_layers() == 3


def test_save_directory_names_the_sub_directory(tmp_path: Path, model_dir: Path) -> None:
    savers = [Saver(type="ascendv1_saver", save_directory="npu"), Saver(type="compressed_tensors_saver")]
    _finish(_open(tmp_path / "out", model_dir, 2, savers), 2, 0, tmp_path)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compressed_tensors", "npu"]
    with pytest.raises(QuantJobError, match=r"spec.save\[1\].save_directory: .*both write"):
        _open(tmp_path / "dup", model_dir, 2, [Saver(type="ascendv1_saver"), Saver(type="ascendv1_saver")])


def test_each_saver_resumes_on_its_own(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save = tmp_path / "out"
    first = _open(save, model_dir, 5)
    for index in range(3):
        first.save(layer_output(index))
    first.abort()                                                       # the pod dies here
    staged = save / "compressed_tensors" / STAGING_DIR / "layer-00001.json"
    staged.unlink()                                                     # this saver lost layer 1
    second = _open(save, model_dir, 5)
    assert second.committed_layers() == 1                               # the smallest prefix
    assert second.load_layer(0).index == 0
    # layers 1..4 again; the ascendv1 saver already holds 1 and 2, and the finish of the
    # compressed-tensors saver is cut short after the ascendv1 one is complete
    from quantjob.formats.compressed_tensors import writer as format_compressed_tensors

    def lost(*args: object) -> bytes:
        raise OSError("node lost")

    monkeypatch.setattr(format_compressed_tensors.CompressedTensorsFormat, "entry_bytes", lost)
    with pytest.raises(OSError, match="node lost"):
        try:
            _finish(second, 5, 1, tmp_path)
        except BaseException:
            second.abort()
            raise
    monkeypatch.undo()
    assert (save / "ascendv1" / COMPLETE).exists() and not (save / "compressed_tensors" / COMPLETE).exists()
    third = _open(save, model_dir, 5)
    assert not third.already_complete and third.committed_layers() == 5
    third.write_json("quant_errors.json", {"layers": 5})
    third.finish(outer_source(tmp_path))
    run_all(tmp_path / "ascend", model_dir, layers=5)
    run_all(tmp_path / "ct", model_dir, layers=5, saver_type="compressed_tensors_saver")
    assert tree(save / "ascendv1") == tree(tmp_path / "ascend")
    assert tree(save / "compressed_tensors") == tree(tmp_path / "ct")


def _config(path: Path, savers: list[dict[str, object]]) -> Path:
    path.write_text(yaml.safe_dump({"apiversion": "modelslim_v1", "spec": {"process": [{
        "type": "linear_quant", "qconfig": {
            "act": {"scope": "per_token", "dtype": "int8", "symmetric": True},
            "weight": {"scope": "per_channel", "dtype": "int8", "symmetric": True}}}], "save": savers}}))
    return path


def _same_but_provenance(expected: Path, actual: Path) -> None:
    """Every file identical but the provenance (another config: other savers) and the marker's
    line for it and its run id."""
    want, got = tree_digest(expected), tree_digest(actual)
    assert sorted(want) == sorted(got)
    assert [n for n in want if want[n] != got[n]] == [COMPLETE, "quant_provenance.json"]
    files = [{k: v for k, v in json.loads((root / COMPLETE).read_text())["files"].items()
              if k != "quant_provenance.json"} for root in (expected, actual)]
    assert files[0] == files[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quantize_writes_both_formats_from_one_or_two_ranks(tmp_path: Path) -> None:
    model = tiny_model(tmp_path, "llama")
    calib = calibration(tmp_path, samples=7)
    both = _config(tmp_path / "both.yaml", [{"type": "ascendv1_saver"}, {"type": "compressed_tensors_saver"}])

    def argv(save: Path, config: Path, devices: str) -> list[str]:
        return ["quantize", "--model_path", str(model), "--save_path", str(save), "--device", devices,
                "--config_path", str(config), "--calib_file", str(calib), "--error_samples", "3"]

    log = run_quantize(argv(tmp_path / "one", both, "cpu"))
    assert "2 savers: each writes its own sub-directory" in log
    run_quantize(argv(tmp_path / "two", both, "cpu:0,1"))
    for sub in ("ascendv1", "compressed_tensors"):
        assert_same_tree(tmp_path / "one" / sub, tmp_path / "two" / sub)
    for sub, saver in (("ascendv1", "ascendv1_saver"), ("compressed_tensors", "compressed_tensors_saver")):
        alone = tmp_path / f"alone-{sub}"
        run_quantize(argv(alone, _config(tmp_path / f"{sub}.yaml", [{"type": saver}]), "cpu"))
        _same_but_provenance(alone, tmp_path / "one" / sub)


def test_a_linked_sub_directory_of_a_save_entry_is_refused(tmp_path: Path, model_dir: Path) -> None:
    """Issue 26.12: an entry's sub-directory planted as a link would send its files, and what
    --overwrite removes, wherever it points."""
    save, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "quant_model_description.json").write_text("theirs")
    save.mkdir()
    (save / "ascendv1").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(QuantJobError, match=r"out/ascendv1 is a symbolic link"):
        _open(save, model_dir, 1)
    assert [p.name for p in elsewhere.iterdir()] == ["quant_model_description.json"]
    assert not (save / "compressed_tensors").exists()
