"""Every supported family through the real loop: with nothing quantized, the runner's embedding and
``layer_forward`` reproduce a plain ``transformers`` forward of the whole model, layer by layer,
including sliding-window layers on samples longer than the window. A family without this test is
not supported. Also: Gemma3's (1 + w) norm fold, and multimodal Gemma3 checkpoints (refused, and
the documented conversion to a text-only directory).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from quantjob.api.check import resolve
from quantjob.api.modelslim import ModelslimConfig
from quantjob.api.presets import preset_dict
from quantjob.families import family_named
from quantjob.worker.errors import QuantJobError
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop import runner as runner_module
from quantjob.worker.loop.calibration import load_calibration
from quantjob.worker.loop.runner import WorkerJob, run_quantization
from quantjob.worker.model.adapters import adapter_for, supported_model_types
from quantjob.worker.model.checkpoint import Checkpoint
from quantjob.worker.model.decoder import build_skeleton, layer_forward, materialise
from quantjob.worker.model.demo import build_demo_model, demo_config, family_names, write_tokenizer
from quantjob.worker.model.model_config import read_model_config

CPU = torch.device("cpu")
WINDOW = 16
FAMILIES = family_names()
# the sliding window each family's test model gets, where the family has sliding windows; samples run past it
WINDOWS: dict[str, int | None] = {family: WINDOW if family_named(family).demo.sliding_window else None
                                  for family in FAMILIES}
# hidden 80: sqrt(80) is not a bf16 number, so Gemma's embedding scale is really rounded
SHAPE: dict[str, Any] = {"hidden_size": 80, "intermediate_size": 128, "num_heads": 4, "num_kv_heads": 2,
                         "seed": 11}
LAYERS = 4


def test_every_supported_family_is_tested_here() -> None:
    """The families below are the registered ones; those with sliding windows run with one."""
    assert set(supported_model_types()) == set(FAMILIES)
    assert {family for family, window in WINDOWS.items() if window} == {"qwen2", "qwen3", "mistral", "gemma3_text"}


def _nothing_quantized() -> ModelslimConfig:
    data = preset_dict("w8a8")
    data["spec"]["process"][0]["include"] = ["*.no_such_linear"]
    config = resolve(ModelslimConfig.model_validate(data), 1).config
    assert config is not None
    return config


def _bf16_close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Within half a bf16 step of the largest value."""
    return bool((got.float() - want.float()).abs().max() <= 2 ** -9 * want.float().abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_loop_with_nothing_quantized_reproduces_transformers(
        family: str, tiny_model: Callable[..., Path], calib_jsonl: Callable[..., Path], memory_saver: Any,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(family, LAYERS, sliding_window=WINDOWS[family], **SHAPE)
    calib = calib_jsonl(8, seed=2, min_words=3, max_words=40)
    embedded: dict[int, torch.Tensor] = {}
    outputs: dict[int, list[torch.Tensor]] = defaultdict(list)  # layer -> outputs in sample order
    real_embed, real_forward = runner_module._Loop.embed, runner_module.layer_forward

    def embed(loop: Any) -> dict[int, torch.Tensor]:
        hidden = real_embed(loop)
        embedded.update({g: h.clone() for g, h in hidden.items()})
        return hidden

    def forward(skeleton: Any, index: int, layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        out = real_forward(skeleton, index, layer, hidden)
        outputs[index].append(out.clone())
        return out

    monkeypatch.setattr(runner_module._Loop, "embed", embed)
    monkeypatch.setattr(runner_module, "layer_forward", forward)
    job = WorkerJob(model_path=model, save_path=tmp_path / "out", config=_nothing_quantized(), calib_file=calib,
                    calib_samples=8, max_length=64)
    run_quantization(job, ProcessGroup(), CPU, open_saver_fn=memory_saver)
    assert all(not memory_saver.last.layers[i].quantized for i in range(LAYERS))  # nothing quantized

    samples = load_calibration(calib, model, samples=8, max_length=64).samples
    lengths = [len(ids) for ids in samples]
    assert all(len(outputs[i]) == len(samples) for i in range(LAYERS))  # one forward per sample and layer
    config = read_model_config(model)
    if WINDOWS[family] is not None:  # the window cuts some samples and not others
        assert min(lengths) <= WINDOW < max(lengths), lengths
        assert config.get("sliding_window") == WINDOW
    # MoE: transformers' eager experts forward, the reference quantjob.worker.model.experts computes bit for bit
    # (its default grouped_mm kernel sums the routed experts' outputs in another order: within 1 bf16 step)
    moe = {"experts_implementation": "eager"} if family_named(family).moe else {}
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                           **moe)
    last: list[torch.Tensor] = []
    hf.get_submodule(adapter_for(config).layers)[-1].register_forward_hook(
        lambda _m, _a, out: last.append(out[0] if isinstance(out, tuple) else out))
    for g, ids in enumerate(samples):
        with torch.no_grad():
            states = hf(input_ids=ids.unsqueeze(0), output_hidden_states=True).hidden_states
        assert len(states) == LAYERS + 1  # the embedding, then layers 0..L-2, then the final norm
        expected = [*states[:LAYERS], last[-1]]
        got = [embedded[g]] + [outputs[i][g] for i in range(LAYERS)]
        assert torch.equal(got[0], expected[0]), f"{family}: embedding of sample {g}"
        for index in range(LAYERS):
            assert _bf16_close(got[index + 1], expected[index + 1]), f"{family}: layer {index}, sample {g}"


def test_layer_types_drive_rotary_and_window(tiny_model: Callable[..., Path]) -> None:
    """Gemma3 layers alternate sliding/full, each with its own rope base; Mistral slides everywhere."""
    gemma = tiny_model("gemma3_text", LAYERS, sliding_window=WINDOW, **SHAPE)
    skeleton = build_skeleton(gemma, adapter_for(read_model_config(gemma)), CPU, trust_remote_code=False)
    assert [skeleton.layer_type(i) for i in range(LAYERS)] == ["sliding_attention", "full_attention"] * 2
    assert [skeleton.sliding_window(i) for i in range(LAYERS)] == [WINDOW, None, WINDOW, None]
    local, global_ = skeleton.position_embeddings(0, 40, torch.float32), skeleton.position_embeddings(1, 40, torch.float32)
    assert not torch.equal(local[0], global_[0])
    assert skeleton.position_embeddings(2, 40, torch.float32) is local  # computed once per type and length
    mistral = tiny_model("mistral", LAYERS, sliding_window=WINDOW, **SHAPE)
    skeleton = build_skeleton(mistral, adapter_for(read_model_config(mistral)), CPU, trust_remote_code=False)
    assert [skeleton.sliding_window(i) for i in range(LAYERS)] == [WINDOW] * LAYERS
    qwen2 = tiny_model("qwen2", LAYERS, sliding_window=WINDOW, **SHAPE)  # max_window_layers = 2
    skeleton = build_skeleton(qwen2, adapter_for(read_model_config(qwen2)), CPU, trust_remote_code=False)
    assert [skeleton.sliding_window(i) for i in range(LAYERS)] == [None, None, WINDOW, WINDOW]
    llama = tiny_model("llama", LAYERS, **SHAPE)
    skeleton = build_skeleton(llama, adapter_for(read_model_config(llama)), CPU, trust_remote_code=False)
    assert [skeleton.sliding_window(i) for i in range(LAYERS)] == [None] * LAYERS


def test_unknown_layer_type_is_refused(tmp_path: Path) -> None:
    model = build_demo_model(tmp_path / "m", family="gemma3_text", num_layers=2)
    config = json.loads((model / "config.json").read_text())
    config["layer_types"] = ["sliding_attention", "chunked_attention"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantJobError, match=r"config.json: layer_types 'chunked_attention' are not supported"):
        build_skeleton(model, adapter_for(config), CPU, trust_remote_code=False)


def _fold(tensors: dict[str, torch.Tensor], prefix: str, family: str, seed: int,
          fold_norm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every norm-linear subgraph smoothed by a random positive ``s``: 1/s into the norm, s into the linears."""
    adapter = adapter_for({"model_type": family})
    generator = torch.Generator().manual_seed(seed)
    out = dict(tensors)
    for spec in adapter.subgraph_specs:
        if spec.kind != "norm-linear":
            continue
        norm = out[f"{prefix}{spec.source}.weight"]
        scale = torch.exp(0.5 * torch.randn(norm.shape, generator=generator))
        out[f"{prefix}{spec.source}.weight"] = fold_norm(norm, scale)
        for target in spec.targets:
            weight = out[f"{prefix}{target}.weight"]
            out[f"{prefix}{target}.weight"] = (weight.float() * scale).to(weight.dtype)
    return out


@pytest.mark.parametrize("index", [0, 1])  # a sliding and a global layer
def test_gemma3_fold_into_one_plus_w_norms_keeps_the_float_function(index: int,
                                                                    tiny_model: Callable[..., Path]) -> None:
    """Folding 1/s into a (1 + w) norm writes (1 + w)/s - 1: the layer computes the same function
    (float32: to float32 rounding; bf16 as stored: within a few times what bf16 arithmetic itself
    moves the output). Writing w/s, the Llama-style fold, changes the function."""
    family = "gemma3_text"
    model = tiny_model(family, LAYERS, sliding_window=WINDOW, **SHAPE)
    adapter = adapter_for(read_model_config(model))
    assert adapter.norm_offset == 1.0
    skeleton = build_skeleton(model, adapter, CPU, trust_remote_code=False)
    checkpoint, prefix, layer = Checkpoint(model), adapter.layer_prefix(index), skeleton.layers[index]
    source = checkpoint.load(checkpoint.names_under(prefix), CPU)
    hidden = torch.randn(1, 40, SHAPE["hidden_size"], generator=torch.Generator().manual_seed(5))

    def run(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        materialise(layer, prefix, {name: t.to(dtype) for name, t in tensors.items()})
        with torch.no_grad():
            return layer_forward(skeleton, index, layer, hidden.to(dtype)).float()

    def naive(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (weight.float() / scale).to(weight.dtype)

    as_float = {name: t.float() for name, t in source.items()}
    ref32 = run(as_float, torch.float32)
    folded32 = run(_fold(as_float, prefix, family, 1, adapter.folded_norm_weight), torch.float32)
    assert (folded32 - ref32).abs().max() <= 1e-5 * ref32.abs().max()
    assert (run(_fold(as_float, prefix, family, 1, naive), torch.float32) - ref32).abs().max() > 0.1 * ref32.abs().max()

    ref16 = run(source, torch.bfloat16)
    floor = (ref16 - ref32).abs().max()  # what bf16 arithmetic alone does to this layer's output
    folded16 = run(_fold(source, prefix, family, 1, adapter.folded_norm_weight), torch.bfloat16)
    assert (folded16 - ref16).abs().max() <= 4 * floor
    assert (run(_fold(source, prefix, family, 1, naive), torch.bfloat16) - ref16).abs().max() > 10 * floor


# --- multimodal Gemma3 checkpoints: refused, and the documented conversion ------------------------

def _tiny_multimodal_gemma3(path: Path) -> Path:
    text = demo_config("gemma3_text", num_layers=2, tie_word_embeddings=True)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                       mm_tokens_per_image=4)
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # Gemma norms start at 0 (a multiplier of 1): make them matter
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") and "language_model" in name:
                param.normal_(0.0, 0.3)
    model.to(torch.bfloat16).save_pretrained(path)
    write_tokenizer(path)
    return path


def _extract_text_model(source: Path, target: Path) -> None:
    """The conversion docs/models.md gives, line for line."""
    import transformers

    full = transformers.Gemma3ForConditionalGeneration.from_pretrained(source, dtype=torch.bfloat16)
    with torch.device("meta"):
        text = transformers.Gemma3ForCausalLM(full.config.text_config)
    text.model = full.model.language_model
    text.lm_head = full.lm_head
    text.config.dtype = torch.bfloat16
    text.save_pretrained(target)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(target)


@pytest.fixture(scope="module")
def multimodal_gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_multimodal_gemma3(tmp_path_factory.mktemp("gemma3-mm") / "mm")


def test_multimodal_gemma3_is_refused_with_the_fix(multimodal_gemma3: Path) -> None:
    model = multimodal_gemma3
    config = read_model_config(model)
    assert "text_config" in config and "vision_config" in config
    for override in (None, "gemma3-4b"):
        with pytest.raises(QuantJobError) as info:
            adapter_for(config, override, config_file=str(model / "config.json"))
        message = str(info.value)
        assert str(model / "config.json") in message and "'gemma3'" in message
        assert "Gemma3ForConditionalGeneration" in message and "gemma3_text" in message
        assert "docs/models.md" in message


def test_quantize_refuses_it_before_launching_ranks(multimodal_gemma3: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """On several devices the adapter's message comes first (not the check's dp_layer_wise one,
    whose advice, one device, would not help), and no rank starts."""
    from quantjob.cli import main

    out = tmp_path / "out"
    argv = ["quantize", "--model_path", str(multimodal_gemma3), "--save_path", str(out), "--quant_type", "w8a8",
            "--device", "cpu:0,1"]
    assert main(argv) == 3  # exit_codes.INPUT: the model itself, no restart helps
    err = capsys.readouterr().err
    assert "quantjob: error: " in err and "multimodal wrapper" in err and "docs/models.md" in err
    assert "dp_layer_wise" not in err and "rank" not in err
    assert not out.exists()


def test_documented_conversion_gives_the_same_text_model(multimodal_gemma3: Path, tmp_path: Path) -> None:
    source = multimodal_gemma3
    target = tmp_path / "text"
    _extract_text_model(source, target)
    config = read_model_config(target)
    adapter = adapter_for(config)
    assert config["model_type"] == "gemma3_text" and adapter.name == "gemma3_text"
    assert (target / "tokenizer.json").is_file()
    checkpoint = Checkpoint(target)
    assert checkpoint.names_under(adapter.layer_prefix(0)) and "model.embed_tokens.weight" in checkpoint.tensors
    skeleton = build_skeleton(target, adapter, CPU, trust_remote_code=False)
    full = transformers.Gemma3ForConditionalGeneration.from_pretrained(source, dtype=torch.bfloat16)
    ids = torch.arange(4, 40)
    with torch.no_grad():
        expected = full(input_ids=ids.unsqueeze(0), output_hidden_states=True).hidden_states
        hidden = skeleton.embed(ids, checkpoint.load(["model.embed_tokens.weight"], CPU)["model.embed_tokens.weight"])
        assert torch.equal(hidden, expected[0])
        prefix = adapter.layer_prefix(0)
        materialise(skeleton.layers[0], prefix, checkpoint.load(checkpoint.names_under(prefix), CPU))
        assert _bf16_close(layer_forward(skeleton, 0, skeleton.layers[0], hidden), expected[1])
