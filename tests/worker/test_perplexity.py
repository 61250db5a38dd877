"""The layer-by-layer perplexity evaluator against a direct whole-model ``transformers`` computation.

Float: the evaluator reads the model directory one layer at a time; the reference loads the whole
model with ``from_pretrained`` and runs each window through it. Fake-quantized: the reference is
the same whole model with every quantized linear replaced by a float64 computation written here
from the saved files (dequantized weights ``W_q * weight_scale``, activations quantized with the
bf16-rounded reciprocal of ``input_scale``, the float bias): none of ``quant_bias``,
``deq_scale`` or ``quantjob.worker.readers.ascend_forward`` is used, so the two routes share only the
saved integers and scales.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quantjob.cli import main
from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.demo import corpus_text
from quantjob.worker.readers.perplexity import (
    Window,
    evaluate_windows,
    make_windows,
    open_model,
    perplexity,
)

MAX_LENGTH = 48
BOS = 1


def _text_ids(model: Path, tokens: int = 300) -> list[int]:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model))
    return list(tokenizer(corpus_text()[:4000], add_special_tokens=False)["input_ids"])[:tokens]


def _reference_nll(model: Path, windows: list[Window],
                   patch: Callable[[torch.nn.Module], None] | None = None) -> list[float]:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.bfloat16)
    hf.config._attn_implementation = "sdpa"
    if patch is not None:
        patch(hf)
    out = []
    with torch.no_grad():
        for window in windows:
            logits = hf(window.ids.unsqueeze(0)).logits[0]
            start = max(window.first_scored, 1)
            logp = torch.log_softmax(logits.float(), dim=-1)[start - 1:-1]
            out.append(-logp.gather(1, window.ids[start:].unsqueeze(1)).double().sum().item())
    return out


class _SavedLinear(torch.nn.Module):
    """What the saved tensors of one linear mean, in float64 (the test's own reading)."""

    def __init__(self, scheme: str, t: dict[str, torch.Tensor], bias: torch.Tensor | None) -> None:
        super().__init__()
        self.scheme, self.t, self.bias = scheme, t, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, xd = self.t, x.double()
        if self.scheme == "W8A16":  # the kernel adds the saved offset: W = (q + offset) * scale
            w = ((t["weight"].double() + t["weight_offset"].double()) * t["weight_scale"].double()).to(x.dtype)
            y = xd @ w.double().T
        else:
            w = t["weight"].double() * t["weight_scale"].double()
            if self.scheme == "W8A8":
                scale = t["input_scale"].double()
                offset = t["input_offset"].double()
                reciprocal = (1.0 / t["input_scale"].float()).to(t["input_scale"].dtype).double()
                q = torch.clamp(torch.round(xd * reciprocal + offset), -128, 127)
                xq = (q - offset) * scale
            else:  # W8A8_DYNAMIC: per token, symmetric; npu_dynamic_quant's scale and division in float32
                token_scale = x.float().abs().amax(dim=-1, keepdim=True) / 127
                xq = torch.clamp(torch.round(x.float() / token_scale), -128, 127).double() * token_scale.double()
            y = xq @ w.T
        if self.bias is not None:
            y = y + self.bias.double()
        return y.to(x.dtype)


def _fake_quant_patch(output: Path) -> Callable[[torch.nn.Module], None]:
    description = json.loads((output / "quant_model_description.json").read_text())
    saved: dict[str, torch.Tensor] = {}
    for file in output.glob("quant_model_weights*.safetensors"):
        saved.update(load_file(file))

    def patch(hf: torch.nn.Module) -> None:
        state = hf.state_dict()
        with torch.no_grad():  # the output's float tensors: norms a smoothing processor changed
            for name, kind in description.items():
                if kind == "FLOAT" and name in saved:
                    assert name in state, f"{name}: saved as FLOAT but the model has no such tensor"
                    state[name].copy_(saved[name])
        for name, kind in description.items():
            if not name.endswith(".weight") or kind == "FLOAT":
                continue
            module = name[:-len(".weight")]
            tensors = {key[len(module) + 1:]: value for key, value in saved.items() if key.startswith(module + ".")}
            parent, _, child = module.rpartition(".")
            original = hf.get_submodule(module)
            bias = tensors.pop("bias", None) if original.bias is not None else None
            setattr(hf.get_submodule(parent), child, _SavedLinear(kind, tensors, bias))

    return patch


def _model(tiny_model: Callable[..., Path], family: str) -> Path:
    # large norm outliers: static per-tensor activations lose precision, so quantization shows in the NLL;
    # gemma3_text's sliding layers (window 16) see windows of 48 tokens, so their masks are exercised
    return tiny_model(family, 2, outlier_channels=4, outlier_scale=60.0)


@pytest.fixture(scope="module")
def llama(tiny_model: Callable[..., Path]) -> Path:
    return _model(tiny_model, "llama")


@pytest.fixture(scope="module")
def windows(llama: Path) -> list[Window]:
    return make_windows(_text_ids(llama), MAX_LENGTH, 32, BOS)


def _quantize(model: Path, calib: Path, out: Path, quant_type: str) -> Path:
    argv = ["quantize", "--model_path", str(model), "--save_path", str(out), "--device", "cpu",
            "--quant_type", quant_type, "--calib_file", str(calib), "--calib_samples", "8", "--max_length", "64"]
    assert main(argv) == 0
    return out


def test_windows_score_every_token_once() -> None:
    ids = list(range(10, 30))  # 20 tokens
    for bos, stride in ((None, 4), (None, None), (7, 3), (7, None)):
        windows = make_windows(ids, 8, stride, bos)
        scored: list[int] = []
        for window in windows:
            assert len(window.ids) <= 8
            scored += window.ids[max(window.first_scored, 1):].tolist()
            if bos is not None:
                assert int(window.ids[0]) == bos
        assert scored == (ids if bos is not None else ids[1:])
    assert len(make_windows(ids, 8, None, None)) == 3       # 1 context + 7 scored, 7, 5
    assert len(make_windows(ids, 8, None, 7)) == 3          # BOS + 7 scored: 7, 7, 6
    assert len(make_windows(ids, 8, 4, None)) == 4          # starts 0, 4, 8, 12: every 4 tokens
    with pytest.raises(ValueError, match="stride"):
        make_windows(ids, 8, 8, None)                        # a window scores at most 7 tokens


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_float_model_equals_the_whole_model_forward(tiny_model: Callable[..., Path], windows: list[Window],
                                                    family: str) -> None:
    model = _model(tiny_model, family)
    mine, kind = evaluate_windows(model, windows, torch.device("cpu"))
    reference = _reference_nll(model, windows)
    assert kind == "float"
    assert len(windows) > 3 and windows[1].first_scored > 1  # overlapping windows: the stride matters
    for a, b in zip(mine, reference):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize(("family", "quant_type"), [("llama", "w8a8"), ("llama", "w8a8_dynamic"),
                                                    ("llama", "w8a16"), ("gemma3_text", "w8a8")])
def test_fake_quantized_output_equals_the_whole_model_reference(
        tiny_model: Callable[..., Path], windows: list[Window], calib_jsonl: Callable[..., Path], tmp_path: Path,
        family: str, quant_type: str) -> None:
    model = _model(tiny_model, family)
    out = _quantize(model, calib_jsonl(8), tmp_path / quant_type, quant_type)
    mine, kind = evaluate_windows(out, windows, torch.device("cpu"))
    reference = _reference_nll(model, windows, _fake_quant_patch(out))
    float_nll = _reference_nll(model, windows)
    assert kind == "ascendv1"
    gap = max(abs(a - b) for a, b in zip(mine, reference))
    quantization = max(abs(a - b) for a, b in zip(reference, float_nll))
    # the two routes agree far more closely than quantization moves the result
    assert gap < quantization / 10, (gap, quantization)
    assert math.fsum(mine) == pytest.approx(math.fsum(reference), rel=1e-5)


def test_perplexity_entry_point_and_cli(llama: Path, tmp_path: Path) -> None:
    text = tmp_path / "eval.txt"
    text.write_text(corpus_text()[:3000], encoding="utf-8")
    result = perplexity(llama, text, max_length=MAX_LENGTH, max_tokens=200)
    assert result.tokens == 200 and result.kind == "float"
    assert result.perplexity == pytest.approx(math.exp(result.nll_sum / result.tokens))
    report = tmp_path / "ppl.json"
    argv = ["perplexity", "--model_path", str(llama), "--text", str(text), "--max_length", str(MAX_LENGTH),
            "--max_tokens", "200", "--json", str(report)]
    assert main(argv) == 0
    assert json.loads(report.read_text())["perplexity"] == pytest.approx(result.perplexity, rel=1e-12)


def test_bad_inputs_are_refused_with_the_fix(llama: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "eval.txt"
    text.write_text("some text to score " * 20, encoding="utf-8")
    assert main(["perplexity", "--model_path", str(llama), "--text", str(tmp_path / "none.txt")]) == 3
    assert "does not exist; fix --text" in capsys.readouterr().err
    assert main(["perplexity", "--model_path", str(llama), "--text", str(text), "--max_length", "8",
                 "--stride", "8"]) == 2
    assert "--stride" in capsys.readouterr().err
    assert main(["perplexity", "--model_path", str(llama), "--text", str(text), "--device", "cpu:0,1"]) == 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "llama",
                                                     "quantization_config": {"quant_method": "awq"}}))
    with pytest.raises(QuantJobError, match="quant_method 'awq'"):
        open_model(foreign)
