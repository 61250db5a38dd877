"""A model's ``model.safetensors.index.json`` names files inside the model directory only (issue 27):
an entry with ``..``, an absolute path, or a link that leads out of the directory is refused,
naming the index file and the entry, before any file outside is read. The Hugging Face cache's own
links (``snapshots/<rev>/<file>`` -> ``blobs/<hash>``) stay readable."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.checkpoint import INDEX_NAME, SINGLE_NAME, Checkpoint


@pytest.fixture
def sharded(tiny_model: Callable[..., Path], tmp_path: Path) -> Path:
    """A copy of a tiny model whose single weight file is named through an index."""
    model = Path(shutil.copytree(tiny_model("llama", 2), tmp_path / "models" / "m"))
    (model / SINGLE_NAME).rename(model / "model-00001-of-00001.safetensors")
    return model


def _index(model: Path, file: str) -> Path:
    names = list(Checkpoint(model).tensors)
    index = model / INDEX_NAME
    index.write_text(json.dumps({"metadata": {}, "weight_map": {name: file for name in names}}))
    return index


def test_an_index_naming_files_inside_the_model_directory_loads(sharded: Path) -> None:
    _index(sharded, "model-00001-of-00001.safetensors")
    assert Checkpoint(sharded).files == [sharded / "model-00001-of-00001.safetensors"]


@pytest.mark.parametrize("entry", ["../outside.safetensors", "sub/../../outside.safetensors", "ABSOLUTE"])
def test_an_index_entry_out_of_the_model_directory_is_refused(sharded: Path, entry: str) -> None:
    outside = sharded.parent / "outside.safetensors"
    shutil.copy(sharded / "model-00001-of-00001.safetensors", outside)
    entry = str(outside) if entry == "ABSOLUTE" else entry
    index = _index(sharded, entry)
    with pytest.raises(QuantJobError) as caught:
        Checkpoint(sharded)
    assert str(index) in str(caught.value) and repr(entry) in str(caught.value)
    assert "not a file name inside the model directory" in str(caught.value)


def test_an_index_entry_through_a_link_out_of_the_model_directory_is_refused(sharded: Path) -> None:
    outside = sharded.parent / "outside.safetensors"
    index = _index(sharded, "model-00001-of-00001.safetensors")
    shutil.move(sharded / "model-00001-of-00001.safetensors", outside)
    (sharded / "model-00001-of-00001.safetensors").symlink_to(outside)
    with pytest.raises(QuantJobError, match=rf"{index}: weight_map entry 'model-00001-of-00001.safetensors' leads "
                                            rf"to {outside}, outside the model directory"):
        Checkpoint(sharded)


def test_a_single_weight_file_linked_out_of_the_model_directory_is_refused(sharded: Path) -> None:
    outside = sharded.parent / "outside.safetensors"
    shutil.move(sharded / "model-00001-of-00001.safetensors", outside)
    (sharded / SINGLE_NAME).symlink_to(outside)
    with pytest.raises(QuantJobError, match=rf"{sharded / SINGLE_NAME} leads to {outside}, outside"):
        Checkpoint(sharded)


def test_the_hugging_face_cache_layout_is_read_through_its_links(sharded: Path, tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--m"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sharded.iterdir():
        blob = repo / "blobs" / f"blob-{path.name}"
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    _index(snapshot, "model-00001-of-00001.safetensors")
    assert len(Checkpoint(snapshot).tensors) == len(Checkpoint(sharded).tensors)
