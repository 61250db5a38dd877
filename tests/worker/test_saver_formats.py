"""A format is one package plus one registration (and the catalogue line of its saver): a third format,
registered here for the test, gets staging, resume, the parallel assembly, the part split, the marker
and the lock unchanged, and is found by the saver, the load rules and the reader dispatch."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_saver_output import layer_output, open_ascend, outer_source, run_all

from quantjob.api import catalogue
from quantjob.api.catalogue import Algorithm
from quantjob.api.modelslim import LinearQuant, ModelslimConfig
from quantjob.api.problems import Problem
from quantjob.api.rules_output import output_problems
from quantjob.formats import OutputFormatEntry, register, unregister
from quantjob.worker.loop.records import LayerOutput
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


def _plain_rules(config: ModelslimConfig, entries: list[tuple[str, LinearQuant]], saver_at: str,
                 model_config: dict[str, Any] | None, prefix: str) -> list[Problem]:
    return [Problem(f"{prefix}{path}", f"plain listing with {saver_at}", "warning") for path, _ in entries]


class PlainOutput:
    def __init__(self, model_dir: Path) -> None:
        self.names = [name for name, _ in json.loads((model_dir / "plain.json").read_text())]


PLAIN = OutputFormatEntry("plain", _plain_rules, PlainFormat, lambda d, _config: (d / "plain.json").is_file(),
                          PlainOutput, kind="plain", reads_what="plain listings")


@pytest.fixture
def plain_saver(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    register(PLAIN)
    monkeypatch.setitem(catalogue.SAVERS, "plain_saver", Algorithm("plain_saver", "saver", "test", format="plain"))
    try:
        yield "plain_saver"
    finally:
        unregister("plain")


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


def test_the_rules_and_the_reader_find_a_registered_format(plain_saver: str, tmp_path: Path,
                                                           tiny_model) -> None:  # type: ignore[no-untyped-def]
    from quantjob.worker.readers.perplexity import SavedSource, open_model

    config = ModelslimConfig.model_validate({"spec": {
        "process": [{"type": "linear_quant", "qconfig": {"weight": {}}}], "save": [{"type": plain_saver}]}})
    assert [p.message for p in output_problems(config, None, "")] == ["plain listing with spec.save[0]"]
    model = tiny_model("qwen2", 2)
    out = tmp_path / "out"
    run_all(out, model, layers=2, saver_type=plain_saver)
    source = open_model(out)
    assert isinstance(source, SavedSource) and source.kind == "plain"
    assert "model.layers.0.self_attn.q_proj.weight" in source.output.names
