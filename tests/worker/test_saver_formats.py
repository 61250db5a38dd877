"""A format is one module plus one catalogue line: a third format, registered here for the test,
gets staging, resume, the parallel assembly, the part split, the marker and the lock unchanged."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_saver_output import layer_output, open_ascend, outer_source, run_all

from quantjob.api import catalogue
from quantjob.api.catalogue import Algorithm
from quantjob.worker.records import LayerOutput
from quantjob.worker.savers.formats import FLOAT, NamedTensor, OutputContents


class PlainFormat:
    """Dequantized float weights and a JSON list of names: nothing any engine wants, all a format needs."""

    name = "plain"
    weights_prefix = "plain"
    entry_file = "plain.json"
    entry_what = "a plain listing"

    def layer_tensors(self, out: LayerOutput) -> list[NamedTensor]:
        tensors = []
        for q in out.quantized:
            columns = q.weight_q.shape[1] // q.weight_scale.shape[1]
            weight = ((q.weight_q.float() - q.weight_offset.repeat_interleave(columns, 1))
                      * q.weight_scale.repeat_interleave(columns, 1))
            tensors.append(NamedTensor(f"{q.name}.weight", q.scheme, weight.to(q.dtype)))
        return tensors + [NamedTensor(n, FLOAT, t) for n, t in out.float_tensors.items()]

    def model_file(self, name: str, data: bytes) -> bytes | None:
        return data

    def entry_bytes(self, contents: OutputContents) -> bytes:
        return json.dumps([[name, tag] for name, tag, _ in contents.tensors]).encode()


@pytest.fixture
def plain_saver(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("quantjob.worker.savers.format_plain")
    module.FORMAT = PlainFormat()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(catalogue.SAVERS, "plain_saver", Algorithm("plain_saver", "saver", "test", format="plain"))
    return "plain_saver"


def test_a_new_format_needs_only_its_module_and_a_catalogue_line(plain_saver: str, tmp_path: Path,
                                                                 tiny_model) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("qwen2", 2)
    clean = tmp_path / "clean"
    run_all(clean, model, layers=4, saver_type=plain_saver, part_file_size=3e-5)
    listing = json.loads((clean / "plain.json").read_text())
    assert ["model.layers.0.self_attn.q_proj.weight", "W8A8"] in listing
    assert len(list(clean.glob("plain-*.safetensors"))) > 1 and (clean / "plain.safetensors.index.json").exists()
    save = tmp_path / "resumed"                                        # resume works the same
    first = open_ascend(save, model, layers=4, saver_type=plain_saver, part_file_size=3e-5)
    first.save(layer_output(0))
    first.save(layer_output(1))
    first.abort()
    second = open_ascend(save, model, layers=4, saver_type=plain_saver, part_file_size=3e-5)
    assert second.committed_layers() == 2
    for index in (2, 3):
        second.save(layer_output(index))
    second.write_json("quant_errors.json", {"layers": 4})
    second.finish(outer_source(save.parent))
    assert sorted(p.name for p in save.iterdir()) == sorted(p.name for p in clean.iterdir())
    for path in clean.iterdir():
        assert (save / path.name).read_bytes() == path.read_bytes(), path.name
