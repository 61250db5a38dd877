"""A smoothed float layer computes the same function as the original, for every family the adapters
support (``demo.family_names()``), in every mode; the statistics the folds hand on are those of the
smoothed layer; biases added by the asymmetric mode survive a rebuild from records (replay)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from quantjob.api.modelslim import FlexSmoothQuant, IterSmooth
from quantjob.api.processor_registry import statistics_for
from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.loop.observers import (
    observe_inputs,
    probes_per_sample,
    record_probes,
    reduce_stats,
)
from quantjob.worker.loop.records import LayerOutput
from quantjob.worker.model.adapters import adapter_for
from quantjob.worker.model.added_biases import added_bias_modules
from quantjob.worker.model.checkpoint import Checkpoint
from quantjob.worker.model.decoder import (
    build_skeleton,
    layer_forward,
    materialise,
    quantized_layer,
    release,
)
from quantjob.worker.model.demo import family_names
from quantjob.worker.model.model_config import read_model_config
from quantjob.worker.processors import LayerContext, processor_for
from quantjob.worker.processors.flex_smooth import gather_probes

CPU = torch.device("cpu")
PROCESSORS: dict[str, Any] = {
    "iter_smooth": IterSmooth(),
    "iter_smooth asymmetric": IterSmooth(symmetric=False),
    "iter_smooth alpha 0.5": IterSmooth(alpha=0.5, enable_subgraph_type=["norm-linear", "up-down"]),
    "flex_smooth_quant searched": FlexSmoothQuant(),
    "flex_smooth_quant fixed": FlexSmoothQuant(alpha=0.6, beta=0.3),
    # issue 23: the search scored on every token of the rank's samples
    "flex_smooth_quant every token": FlexSmoothQuant.model_validate({"ext": {"search_tokens": "all"}}),
}


class Layer:
    """Layer 0 of a tiny model, materialised, with a few bf16 input samples."""

    def __init__(self, model: Path, samples: int = 4) -> None:
        config = read_model_config(model)
        self.adapter = adapter_for(config)
        self.skeleton = build_skeleton(model, self.adapter, CPU, trust_remote_code=False)
        self.prefix = self.adapter.layer_prefix(0)
        self.layer = self.skeleton.layers[0]
        checkpoint = Checkpoint(model)
        materialise(self.layer, self.prefix, checkpoint.load(checkpoint.names_under(self.prefix), CPU))
        generator = torch.Generator().manual_seed(11)
        hidden = int(config["hidden_size"])
        self.inputs = {g: torch.randn(1, 9 + 3 * g, hidden, generator=generator).bfloat16() for g in range(samples)}
        self.inputs[1][0, 0] *= 30.0  # a first-token outlier, as in real models
        self.linears = {self.prefix + n: m for n, m in self.layer.named_modules() if isinstance(m, torch.nn.Linear)}
        self.config = config

    def forward(self) -> dict[int, torch.Tensor]:
        with torch.inference_mode():
            return {g: layer_forward(self.skeleton, 0, self.layer, x) for g, x in self.inputs.items()}

    def context(self, every_row: bool = False) -> LayerContext:
        samples = list(self.inputs)
        per_sample = None if every_row else probes_per_sample(len(samples))
        with torch.inference_mode(), observe_inputs(self.linears) as stats, \
                record_probes(self.linears, samples, per_sample) as probes:
            self.forward()
        ctx = LayerContext(0, self.prefix, self.layer, self.linears, self.adapter, group=ProcessGroup(),
                           subgraphs=self.adapter.subgraphs(self.config), num_samples=len(samples),
                           probes_per_sample=per_sample)
        ctx.stats, ctx.probes = reduce_stats(stats, ProcessGroup()), probes
        return ctx


def assert_same_function(before: dict[int, torch.Tensor], after: dict[int, torch.Tensor]) -> None:
    """Equal at bf16 precision: every difference within a few bf16 steps of the output's magnitude
    (the folded weights are rounded to bf16 once each)."""
    for g, reference in before.items():
        scale = float(reference.float().abs().amax())
        diff = float((after[g].float() - reference.float()).abs().amax())
        assert diff <= 4 * 2.0 ** -8 * scale, f"sample {g}: max abs difference {diff} at output scale {scale}"


@pytest.mark.parametrize("name", list(PROCESSORS))
@pytest.mark.parametrize("family", family_names())
def test_smoothed_layer_computes_the_same_function(tiny_model: Any, family: str, name: str) -> None:
    layer = Layer(tiny_model(family, layers=1, hidden_size=64, intermediate_size=128, num_heads=4,
                             num_kv_heads=2, outlier_channels=3))
    before = layer.forward()
    ctx = layer.context(every_row="rows" in statistics_for([PROCESSORS[name]]))
    weights = {n: t.clone() for n, t in layer.layer.state_dict().items()}
    with torch.inference_mode():
        processor_for(PROCESSORS[name].type).apply(PROCESSORS[name], ctx)
    changed = [n for n, t in layer.layer.state_dict().items() if n not in weights or not torch.equal(t, weights[n])]
    assert any("layernorm" in n for n in changed) and any("proj" in n for n in changed)
    assert_same_function(before, layer.forward())
    release(layer.layer)


@pytest.mark.parametrize("family", family_names())
def test_folded_statistics_describe_the_smoothed_layer(tiny_model: Any, family: str) -> None:
    layer = Layer(tiny_model(family, layers=1, hidden_size=64, intermediate_size=128, num_heads=4,
                             num_kv_heads=2, outlier_channels=3))
    ctx = layer.context()
    with torch.inference_mode():
        processor_for("iter_smooth").apply(IterSmooth(symmetric=False), ctx)
    observed = layer.context().stats
    worst = 0.0
    for name, stats in ctx.stats.items():
        real = observed[name]
        span = float(torch.maximum(real.maximum.abs(), real.minimum.abs()).amax())
        # the per-tensor range, which static activation scales are made of
        assert float(stats.maximum.amax()) == pytest.approx(float(real.maximum.amax()), abs=4 * 2.0 ** -8 * span)
        assert float(stats.minimum.amin()) == pytest.approx(float(real.minimum.amin()), abs=4 * 2.0 ** -8 * span)
        for mine, seen in ((stats.minimum, real.minimum), (stats.maximum, real.maximum)):
            worst = max(worst, float((mine - seen).abs().amax()) / span)
    print(f"{family}: worst per-channel difference {worst:.4f} of the tensor's range")
    assert worst <= 8 * 2.0 ** -8
    release(layer.layer)


def test_asymmetric_biases_are_saved_and_come_back_on_replay(tiny_model: Any) -> None:
    layer = Layer(tiny_model("llama", layers=1, hidden_size=64, intermediate_size=128, num_heads=4,
                             num_kv_heads=2, outlier_channels=3))
    before = layer.forward()
    ctx = layer.context()
    with torch.inference_mode():
        processor_for("iter_smooth").apply(IterSmooth(symmetric=False), ctx)
    assert sorted(added_bias_modules(layer.layer)) == [
        "input_layernorm", "mlp.gate_proj", "mlp.up_proj", "post_attention_layernorm",
        "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"]
    saved = LayerOutput(0, [], {layer.prefix + n: t.clone() for n, t in layer.layer.state_dict().items()})
    assert f"{layer.prefix}input_layernorm.bias" in saved.float_tensors
    release(layer.layer)  # back to the model's own modules: no bias anywhere
    assert added_bias_modules(layer.layer) == []
    assert "input_layernorm.bias" not in layer.layer.state_dict()
    # replay: the skeleton layer rebuilt from the saved tensors alone gets its biases back
    with torch.inference_mode(), quantized_layer(layer.layer, layer.prefix, saved, CPU) as rebuilt:
        after = {g: layer_forward(layer.skeleton, 0, rebuilt, x) for g, x in layer.inputs.items()}
    assert_same_function(before, after)
    release(layer.layer)
    assert added_bias_modules(layer.layer) == []


def test_probe_search_picks_its_probes_out_of_every_row(tiny_model: Any) -> None:
    """A run whose other flex entry scores every token keeps every row; a probe entry then scores
    the probe positions of them, as it would have recorded them (issue 23)."""
    layer = Layer(tiny_model("llama", layers=1, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
                             outlier_channels=3))
    generator = torch.Generator().manual_seed(5)
    layer.inputs = {g: torch.randn(1, 150 + 40 * g, 64, generator=generator).bfloat16() for g in range(4)}
    probed, every = layer.context(every_row=False), layer.context(every_row=True)
    names = sorted({probed.full_name(site.targets[0]) for site in probed.subgraphs})
    subset, picked = gather_probes(probed, names), gather_probes(every, names)
    tokens = sum(x.shape[1] for x in layer.inputs.values())
    for name in names:
        assert sum(rows.shape[0] for rows in every.probes[name].values()) == tokens
        assert subset[name].shape[0] < tokens and torch.equal(picked[name], subset[name])
    release(layer.layer)
