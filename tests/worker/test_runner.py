"""The layer-wise loop on tiny models of every family, with an in-memory saver.

Checks: dequantized weights within half a step of the source, float tensors byte-identical to the
source, static activation ranges equal to a plain Hugging Face forward of each sample, the error
table, next_layer_input, resume by replay, memory residency, progress, abort on failure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file

from quantjob.api.check import resolve
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.presets import preset, preset_dict
from quantjob.worker.errors import QuantJobError
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop import runner as runner_module
from quantjob.worker.loop.calibration import load_calibration
from quantjob.worker.loop.quantizers import dequantize_weight, representable
from quantjob.worker.loop.runner import RunSummary, WorkerJob, run_quantization
from quantjob.worker.model.adapters import adapter_for
from quantjob.worker.model.checkpoint import Checkpoint, load_tensor
from quantjob.worker.model.decoder import build_skeleton, layer_forward, materialise
from quantjob.worker.model.demo import build_demo_model, family_names

CPU = torch.device("cpu")


def _config(quant_type: str = "w8a8", **weight_ext: Any) -> ModelslimConfig:
    """The preset's linear_quant alone (these tests check records against the source weights; the
    w8a8_dynamic preset's iter_smooth changes them: test_w8a8_dynamic_preset_smooths_first)."""
    data = preset_dict(quant_type)
    data["spec"]["process"] = [entry for entry in data["spec"]["process"] if entry["type"] == "linear_quant"]
    if weight_ext:
        data["spec"]["process"][0]["qconfig"]["weight"]["ext"] = weight_ext
    config = resolve(ModelslimConfig.model_validate(data), 1).config
    assert config is not None
    return config


def _run(model: Path, calib: Path, config: ModelslimConfig, factory: Any, tmp_path: Path,
         **options: Any) -> RunSummary:
    job = WorkerJob(model_path=model, save_path=tmp_path / "out", config=config, calib_file=calib,
                    calib_samples=options.pop("calib_samples", 6), max_length=48, **options)
    return run_quantization(job, ProcessGroup(), CPU, open_saver_fn=factory)


def _source(model: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(model.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _check_outputs(saver: Any, model: Path, num_layers: int, quantized_per_layer: int) -> None:
    source = _source(model)
    seen: set[str] = set()
    for index in range(num_layers):
        out = saver.layers[index]
        assert out.index == index and len(out.quantized) == quantized_per_layer
        for record in out.quantized:
            original = source[f"{record.name}.weight"]
            assert record.weight_q.dtype == torch.int8 and record.dtype == original.dtype
            deq = dequantize_weight(record.weight_q, record.weight_scale, record.weight_offset)
            step = record.weight_scale.repeat_interleave(original.shape[1] // record.weight_scale.shape[1], dim=1)
            assert torch.all((deq - original.float()).abs() <= step / 2 + 1e-6), record.name
            if record.bias is not None:
                assert torch.equal(record.bias, source[f"{record.name}.bias"])
            seen.update({f"{record.name}.weight", f"{record.name}.bias"})
        for name, tensor in out.float_tensors.items():
            assert tensor.dtype == source[name].dtype and torch.equal(tensor, source[name]), name
            seen.add(name)
    for name, info in saver.outer.items():  # handed over as where they are, copied by the saver
        assert torch.equal(load_tensor(name, info), source[name]), name
        seen.add(name)
    assert set(source) <= seen  # every source tensor went to the saver exactly once as float or record


@pytest.mark.parametrize("family", family_names(moe=False))  # MoE families: tests/worker/test_moe.py
def test_w8a8_every_family(family: str, tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                           memory_saver: Any, tmp_path: Path) -> None:
    model = tiny_model(family, 2)
    summary = _run(model, calib_jsonl(6), _config("w8a8"), memory_saver, tmp_path)
    saver = memory_saver.last
    _check_outputs(saver, model, 2, 7)
    assert saver.finished and not saver.aborted
    for record in saver.layers[0].quantized:
        assert record.scheme == "W8A8" and record.input_scale.shape == (1,)
        assert record.input_offset is not None and float(record.input_offset) == round(float(record.input_offset))
    table = saver.json["quant_errors.json"]
    assert table == summary.errors and table["samples"] == 6
    assert all(0 < row["relative_error"] < 0.5 for row in table["layers"])
    # where the time went: every phase of a fresh run, none counted twice (they fit in the run's time)
    assert set(summary.phases) == {"start", "embedding", "loading", "observation", "processors",
                                   "quantized forward", "saving", "release", "finish"}
    assert all(seconds >= 0 for seconds in summary.phases.values())
    assert sum(summary.phases.values()) <= summary.seconds


@pytest.mark.parametrize(("quant_type", "scheme", "ext"), [
    ("w8a8_dynamic", "W8A8_DYNAMIC", {}), ("w8a16", "W8A16", {}), ("w4a16", "W4A16", {"group_size": 32})])
def test_other_presets(quant_type: str, scheme: str, ext: dict[str, int], tiny_model: Callable[..., Path],
                       calib_jsonl: Callable[..., Path], memory_saver: Any, tmp_path: Path) -> None:
    model = tiny_model("qwen2", 2)
    _run(model, calib_jsonl(6), _config(quant_type, **ext), memory_saver, tmp_path)
    saver = memory_saver.last
    _check_outputs(saver, model, 2, 7)
    for record in saver.layers[1].quantized:
        assert record.scheme == scheme and record.input_scale is None
        if scheme == "W4A16":
            assert record.group_size == 32 and record.weight_scale.shape[1] == record.weight_q.shape[1] // 32
            assert int(record.weight_q.min()) >= -8 and int(record.weight_q.max()) <= 7


def test_w8a8_dynamic_preset_smooths_first(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                           memory_saver: Any, tmp_path: Path) -> None:
    """The preset as a user gets it: iter_smooth folds scales into the norms, then per-token W8A8_DYNAMIC."""
    model = tiny_model("llama", 2, outlier_channels=4, outlier_scale=60.0)
    config = resolve(preset("w8a8_dynamic"), 1).config
    assert config is not None
    _run(model, calib_jsonl(6), config, memory_saver, tmp_path)
    source = _source(model)
    for index in range(2):
        out = memory_saver.last.layers[index]
        assert {r.scheme for r in out.quantized} == {"W8A8_DYNAMIC"} and len(out.quantized) == 7
        for norm in ("input_layernorm", "post_attention_layernorm"):
            name = f"model.layers.{index}.{norm}.weight"
            assert not torch.equal(out.float_tensors[name], source[name]), name  # smoothed
            assert f"model.layers.{index}.{norm}.bias" not in out.float_tensors  # symmetric: no shift


def test_static_ranges_equal_a_plain_forward_of_each_sample(tiny_model: Callable[..., Path],
                                                            calib_jsonl: Callable[..., Path], memory_saver: Any,
                                                            tmp_path: Path) -> None:
    """Per-sample forwards (no padding) observe exactly what the float model computes."""
    model, calib = tiny_model("llama", 2), calib_jsonl(6)
    _run(model, calib, _config("w8a8"), memory_saver, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16, attn_implementation="sdpa")
    lo, hi = {}, {}

    def hook(name: str) -> Any:
        def record(_m: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].float()
            lo[name] = min(lo.get(name, float("inf")), float(x.min()))
            hi[name] = max(hi.get(name, float("-inf")), float(x.max()))
        return record

    for name, module in hf.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            module.register_forward_pre_hook(hook(name))
    samples = load_calibration(calib, model, samples=6, max_length=48).samples
    with torch.no_grad():
        for ids in samples:
            hf(input_ids=ids.unsqueeze(0))
    for index in (0, 1):
        for record in memory_saver.last.layers[index].quantized:
            exact = (max(hi[record.name], 0.0) - min(lo[record.name], 0.0)) / 255
            expected = float(representable(torch.tensor([exact]), torch.bfloat16))  # saved as bf16
            assert float(record.input_scale) == pytest.approx(expected, rel=1e-6), record.name
            assert 0 <= expected - exact <= exact * 2 ** -7  # rounded up, by less than one bf16 step


def test_sliding_window_shorter_than_sample(tmp_path: Path) -> None:
    """Mistral with a window below the sample length: the explicit mask matches transformers."""
    model = build_demo_model(tmp_path / "m", family="mistral", num_layers=1)
    config = json.loads((model / "config.json").read_text())
    config["sliding_window"] = 4
    (model / "config.json").write_text(json.dumps(config))
    adapter = adapter_for(config)
    skeleton = build_skeleton(model, adapter, CPU, trust_remote_code=False)
    layer = skeleton.layers[0]
    checkpoint = Checkpoint(model)
    materialise(layer, "model.layers.0.", checkpoint.load(checkpoint.names_under("model.layers.0."), CPU))
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16, attn_implementation="sdpa")
    ids = torch.arange(5, 17).unsqueeze(0)
    with torch.no_grad():
        expected = hf(input_ids=ids, output_hidden_states=True).hidden_states
        embedded = hf.model.embed_tokens(ids)
        got = layer_forward(skeleton, 0, layer, embedded)
    # hidden_states[-1] has the final norm applied; compare before it
    assert torch.allclose(hf.model.norm(got).float(), expected[-1].float(), atol=2e-2)
    with torch.no_grad():
        unmasked = layer(embedded, position_embeddings=skeleton.position_embeddings(0, 12, torch.bfloat16))
    assert not torch.allclose(unmasked.float(), got.float(), atol=1e-3)  # the window matters here


def test_group_include_exclude(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                               memory_saver: Any, tmp_path: Path) -> None:
    w8a8 = preset_dict("w8a8")["spec"]["process"][0]["qconfig"]
    w8a16 = preset_dict("w8a16")["spec"]["process"][0]["qconfig"]
    data = preset_dict("w8a8")
    data["spec"]["process"] = [{"type": "group", "configs": [
        {"type": "linear_quant", "qconfig": w8a8, "include": ["*self_attn*"], "exclude": ["*.{0}.self_attn.o_proj"]},
        {"type": "linear_quant", "qconfig": w8a16, "include": ["*mlp.{gate,up}_proj"]}]}]
    config = resolve(ModelslimConfig.model_validate(data), 1).config
    model = tiny_model("llama", 2)
    _run(model, calib_jsonl(4), config, memory_saver, tmp_path, calib_samples=4)
    saver = memory_saver.last
    schemes = {r.name.split(".", 3)[3]: r.scheme for r in saver.layers[0].quantized}
    assert schemes == {"self_attn.q_proj": "W8A8", "self_attn.k_proj": "W8A8", "self_attn.v_proj": "W8A8",
                       "mlp.gate_proj": "W8A16", "mlp.up_proj": "W8A16"}
    assert "model.layers.0.self_attn.o_proj.weight" in saver.layers[0].float_tensors
    assert "model.layers.0.mlp.down_proj.weight" in saver.layers[0].float_tensors
    assert len(saver.layers[1].quantized) == 6  # layer 1 keeps o_proj quantized
    source = _source(model)
    assert torch.equal(saver.layers[0].float_tensors["model.layers.0.mlp.down_proj.weight"],
                       source["model.layers.0.mlp.down_proj.weight"])


def test_lm_head_named_in_include_is_refused(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                             memory_saver: Any, tmp_path: Path) -> None:
    data = preset_dict("w8a16")
    data["spec"]["process"][0]["include"] = ["*", "lm_head"]
    config = resolve(ModelslimConfig.model_validate(data), 1).config
    with pytest.raises(QuantJobError, match="lm_head"):
        _run(tiny_model("llama", 2), calib_jsonl(4), config, memory_saver, tmp_path)
    assert memory_saver.last is None  # refused before the saver opened


def test_group_size_not_dividing_is_refused_before_compute(tiny_model: Callable[..., Path],
                                                           calib_jsonl: Callable[..., Path], memory_saver: Any,
                                                           tmp_path: Path) -> None:
    with pytest.raises(QuantJobError, match=r"group_size: 128 does not divide the input width 64"):
        _run(tiny_model("llama", 2), calib_jsonl(4), _config("w4a16", group_size=128), memory_saver, tmp_path)
    assert memory_saver.last is None


def test_next_layer_input_quantized_changes_later_layers_only(tiny_model: Callable[..., Path],
                                                              calib_jsonl: Callable[..., Path], memory_saver: Any,
                                                              tmp_path: Path) -> None:
    model, calib = tiny_model("llama", 3), calib_jsonl(5)
    _run(model, calib, _config("w8a8"), memory_saver, tmp_path)
    floats = memory_saver.last
    _run(model, calib, _config("w8a8"), memory_saver, tmp_path, next_layer_input="quantized")
    quants = memory_saver.last
    def same(index: int) -> list[bool]:
        pairs = zip(floats.layers[index].quantized, quants.layers[index].quantized)
        return [torch.equal(a.input_scale, b.input_scale) for a, b in pairs]

    assert all(same(0)) and not all(same(1))
    assert quants.json["quant_errors.json"]["next_layer_input"] == "quantized"


def test_deterministic_and_error_samples(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                         memory_saver: Any, tmp_path: Path) -> None:
    model, calib = tiny_model("qwen3", 2), calib_jsonl(6)
    first = _run(model, calib, _config("w8a8"), memory_saver, tmp_path, error_samples=3)
    second = _run(model, calib, _config("w8a8"), memory_saver, tmp_path, error_samples=3)
    assert first.errors == second.errors and first.errors["samples"] == 3
    none = _run(model, calib, _config("w8a8"), memory_saver, tmp_path, error_samples=0)
    assert all(row["relative_error"] is None for row in none.errors["layers"])


@pytest.mark.parametrize("mode", ["float", "quantized"])
def test_resume_replays_committed_layers(mode: str, tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                         memory_saver: Any, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    model, calib = tiny_model("qwen2", 3), calib_jsonl(5)
    fresh = _run(model, calib, _config("w8a8"), memory_saver, tmp_path, next_layer_input=mode)
    full = memory_saver.last
    memory_saver.options = {"committed": 2, "stored": {0: full.layers[0], 1: full.layers[1]}}
    with caplog.at_level(logging.INFO, logger="quantjob.worker"):
        resumed = _run(model, calib, _config("w8a8"), memory_saver, tmp_path, next_layer_input=mode)
    assert "resuming at layer 2 of 3" in caplog.text
    again = memory_saver.last
    assert resumed.resumed_from == 2 and resumed.errors == fresh.errors
    for a, b in zip(full.layers[2].quantized, again.layers[2].quantized):
        assert torch.equal(a.weight_q, b.weight_q) and torch.equal(a.input_scale, b.input_scale)


def test_a_finished_output_is_reported_as_such_and_left_alone(tiny_model: Callable[..., Path],
                                                               calib_jsonl: Callable[..., Path],
                                                               memory_saver: Any, tmp_path: Path) -> None:
    """A retried pod of a finished run: the summary says so in its own field (its error table stays
    empty; the earlier run's quant_errors.json is the table), and the saver is neither written nor
    finished again."""
    model, calib = tiny_model("llama", 2), calib_jsonl(4)
    fresh = _run(model, calib, _config("w8a16"), memory_saver, tmp_path)
    assert not fresh.already_complete and fresh.errors["samples"] == 4
    memory_saver.options = {"committed": 2}

    def finished(saver_cfg: Any, **kwargs: Any) -> Any:
        saver = memory_saver(saver_cfg, **kwargs)
        saver.already_complete = True
        return saver

    again = _run(model, calib, _config("w8a16"), finished, tmp_path)
    assert again.already_complete and again.errors == {} and again.resumed_from == 2
    assert not memory_saver.last.layers and not memory_saver.last.json and not memory_saver.last.finished


def test_failure_aborts_the_saver(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                  memory_saver: Any, tmp_path: Path) -> None:
    memory_saver.options = {"fail_at": 1}
    with pytest.raises(QuantJobError, match="disk full"):
        _run(tiny_model("llama", 2), calib_jsonl(4), _config("w8a16"), memory_saver, tmp_path)
    assert memory_saver.last.aborted and not memory_saver.last.finished


def test_at_most_one_layer_resident_and_progress(tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path],
                                                 memory_saver: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    skeletons: list[Any] = []
    build = runner_module.build_skeleton

    def capture(*args: Any, **kwargs: Any) -> Any:
        skeletons.append(build(*args, **kwargs))
        return skeletons[-1]

    def resident() -> int:
        return sum(1 for layer in skeletons[0].layers if not next(layer.parameters()).is_meta)

    materialise = runner_module.materialise
    peaks: list[int] = []

    def watched(layer: torch.nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        peaks.append(resident())
        materialise(layer, prefix, tensors)

    monkeypatch.setattr(runner_module, "build_skeleton", capture)
    monkeypatch.setattr(runner_module, "materialise", watched)
    events: list[tuple[Any, ...]] = []

    class Recorder:
        def start(self, total_layers: int, resumed_from: int = 0) -> None:
            events.append(("start", total_layers, resumed_from))

        def layer_done(self, done: int, total: int, layer_error: float | None) -> None:
            events.append(("layer", done, total, layer_error is not None))

        def finish(self, ok: bool, message: str = "") -> None:
            events.append(("finish", ok))

    job = WorkerJob(model_path=tiny_model("llama", 4), save_path=tmp_path / "out", config=_config("w8a16"),
                    calib_file=calib_jsonl(3), calib_samples=3, max_length=32)
    run_quantization(job, ProcessGroup(), CPU, Recorder(), open_saver_fn=memory_saver)
    assert peaks == [0, 0, 0, 0] and resident() == 0
    assert events == [("start", 4, 0), *[("layer", i, 4, True) for i in (1, 2, 3, 4)], ("finish", True)]


@pytest.mark.parametrize("early", [False, True], ids=["cpu", "accelerator"])
def test_the_next_layer_is_read_ahead_during_compute_only_off_cpu(early: bool, tiny_model: Callable[..., Path],
                                                                  calib_jsonl: Callable[..., Path], memory_saver: Any,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """On cpu the read-ahead layer would share the memory the layer computes in: layer i + 1 is
    submitted only after layer i is released. Off cpu (``reads_ahead_during_compute``) it is
    submitted as layer i is taken, so it loads while layer i computes."""
    events: list[str] = []
    prefetcher_class, release = runner_module.Prefetcher, runner_module.release

    class Spy(prefetcher_class):  # type: ignore[misc, valid-type]
        def submit(self, key: str, names: list[str]) -> None:
            events.append(f"submit {key}")
            super().submit(key, names)

        def take(self, key: str, names: list[str]) -> dict[str, torch.Tensor]:
            events.append(f"take {key}")
            return super().take(key, names)

    def released(layer: torch.nn.Module) -> None:
        events.append("release")
        release(layer)

    monkeypatch.setattr(runner_module, "Prefetcher", Spy)
    monkeypatch.setattr(runner_module, "release", released)
    monkeypatch.setattr(runner_module, "reads_ahead_during_compute", lambda device: early)
    _run(tiny_model("llama", 3), calib_jsonl(2), _config("w8a16"), memory_saver, tmp_path, calib_samples=2)
    layer = [f"model.layers.{i}." for i in range(3)]
    assert [e for e in events if e.startswith("take")] == [f"take {p}" for p in layer]
    for i in (1, 2):
        before = events[:events.index(f"submit {layer[i]}")]
        # take(i) itself submits layer i when nothing was (a plain load); only the read-ahead is checked
        assert before.count("release") == (i - 1 if early else i), events
    assert all(events.index(f"submit {layer[i]}") < events.index(f"take {layer[i]}") for i in (1, 2))
