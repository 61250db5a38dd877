"""The per-rank memory estimate: byte counts from a tiny checkpoint's headers (float and FP8), the
hidden-state arithmetic per rank, the limits it is checked against, the refusal of ``quantjob
quantize`` before any work (exit 3, the numbers in the message) and ``quantjob validate --model_path``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dp_runs import calibration, child_env, quantize_argv, tiny_model
from fp8_models import write_fp8_model

from quantjob.cli import main
from quantjob.families import family_named
from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.checkpoint import Checkpoint, TensorInfo
from quantjob.worker.model.fp8 import fp8_blocks
from quantjob.worker.model.memory_estimate import (
    LIMIT_ENV,
    Capacity,
    Dims,
    LayerBytes,
    check_fits,
    gib,
    host_capacity,
    layer_bytes,
    rank_peaks,
    weights_peak,
)

# tiny llama: hidden 64, intermediate 128, 4 heads of 16, 2 kv heads, bf16
LINEAR_ELEMENTS = 64 * 64 + 32 * 64 + 32 * 64 + 64 * 64 + 3 * 128 * 64   # q k v o, gate up down
LAYER_BYTES = 2 * (LINEAR_ELEMENTS + 2 * 64)                             # + input and post-attention norms


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mem")
    source = tiny_model(root, "llama")
    write_fp8_model(source, root / "fp8", root / "reference", block=(32, 48))
    return source, root / "fp8"


def test_byte_counts_from_the_headers_float_and_fp8(models: tuple[Path, Path]) -> None:
    for model in models:
        config = json.loads((model / "config.json").read_text())
        checkpoint = Checkpoint(model, fp8_blocks(config, "config.json"))
        sizes = layer_bytes(checkpoint.tensors, family_named("llama").adapter, 2)
        assert sizes.layers == (LAYER_BYTES, LAYER_BYTES), model.name        # FP8 counted as bf16
        assert sizes.linears == (2 * LINEAR_ELEMENTS, 2 * LINEAR_ELEMENTS)
        assert sizes.embedding == 2 * config["vocab_size"] * 64 and sizes.dtype_bytes == 2
        assert sizes.largest_linear == 128 * 64
        # the layer + its int8 codes (1 byte each) + at layer 1 the codes of layer 0 the saver may still
        # hold (more than one dequantized linear); the layer read ahead is not on the compute device
        assert weights_peak(sizes) == (LAYER_BYTES + 2 * LINEAR_ELEMENTS, 1)


def test_hidden_states_per_rank() -> None:
    sizes = LayerBytes(2, 1000, (100, 300, 200), (80, 240, 160), 10)
    assert weights_peak(sizes) == (300 + 120 + 40, 1)   # layer 0's codes (40) held by the saver > 20
    dims = Dims(hidden=8, intermediate=16, heads=2)
    lengths = [10, 20, 30, 40, 50]
    peaks = rank_peaks(sizes, dims, lengths, 2, error_samples=3, runtime=0, heap=0)
    token = 8 * 2
    # rank 0 owns samples 0, 2, 4 (10 + 30 + 50 tokens), its error samples are 0 and 2 (40 tokens)
    assert (peaks[0].samples, peaks[0].tokens) == (3, 90)
    assert peaks[0].hidden == (90 + 2 * 40 + 50) * token
    assert peaks[1].hidden == (60 + 2 * 20 + 40) * token
    assert peaks[0].embedding_phase == 1000 + 90 * token
    assert peaks[0].scratch == 50 * (4 * 8 + 4 * 16) * 2 + 4 * 2 * 50 * 50 + 4 * 50 * 16
    assert peaks[0].total == max(peaks[0].embedding_phase, 460 + peaks[0].hidden + peaks[0].scratch)
    assert peaks[0].host_total is None
    device = rank_peaks(sizes, dims, lengths, 2, error_samples=3, runtime=0, accelerator=True, heap=0)
    assert device[0].weights == 460 and device[0].host_total == 300  # the largest layer read ahead, on the host
    quantized = rank_peaks(sizes, dims, lengths, 2, error_samples=3, holding="quantized", runtime=0, heap=0)
    assert quantized[0].hidden == 3 * 90 * token
    one = rank_peaks(sizes, dims, lengths, 1, error_samples=3, runtime=0, heap=0)
    assert one[0].hidden == (150 + 2 * 60 + 50) * token > peaks[0].hidden


def test_the_limit_is_the_override_or_the_host_shared_by_its_ranks() -> None:
    assert host_capacity(1, {LIMIT_ENV: "none"}) is None
    assert host_capacity(4, {LIMIT_ENV: "3Gi"}) == Capacity(3 * 2 ** 30, f"{LIMIT_ENV}=3Gi")
    with pytest.raises(QuantJobError, match=f"{LIMIT_ENV}='lots' is not a memory size") as caught:
        host_capacity(1, {LIMIT_ENV: "lots"})
    assert caught.value.exit_code == 2
    alone, shared = host_capacity(1, {}), host_capacity(2, {})
    assert alone is not None and shared is not None and shared.bytes == alone.bytes // 2
    assert "shared by 2 ranks" in shared.source


def test_refusal_names_the_rank_and_the_numbers() -> None:
    sizes = LayerBytes(2, 0, (3 * 2 ** 30, 3 * 2 ** 30), (3 * 2 ** 30, 3 * 2 ** 30), 10)
    peaks = rank_peaks(sizes, Dims(8, 16, 2), [4] * 4, 2, error_samples=0, runtime=0, heap=0)
    check_fits(peaks, Capacity(16 * 2 ** 30, "test"), "npu:0")
    with pytest.raises(QuantJobError, match=r"not enough memory on cpu: rank 0 \(2 samples, 8 tokens\): "
                                            r"memory 6.00 GiB = .*weights 6.00 GiB at layer 1.*but 6GB allows 5.59 GiB; "
                                            r"use a device or pod with more memory") as caught:
        check_fits(peaks, Capacity(6 * 10 ** 9, "6GB"), "cpu")
    assert caught.value.exit_code == 3
    device = rank_peaks(sizes, Dims(8, 16, 2), [4] * 4, 2, error_samples=0, runtime=0, accelerator=True, heap=0)
    check_fits(device, Capacity(7 * 10 ** 9, "7GB"), "npu:0", Capacity(4 * 2 ** 30, "host"))  # 6.00 GiB on the device, 3 GiB on the host
    with pytest.raises(QuantJobError, match=r"not enough host memory beside npu:0: a rank needs 3.00 GiB \(the "
                                            r"runtime and the next decoder layer, read ahead into host memory\), "
                                            r"but 2Gi allows 2.00 GiB; give the pod more memory"):
        check_fits(device, Capacity(7 * 10 ** 9, "7GB"), "npu:0", Capacity(2 * 2 ** 30, "2Gi"))


def test_quantize_refuses_a_run_that_does_not_fit_before_any_work(models: tuple[Path, Path], tmp_path: Path) -> None:
    env = {**child_env(), LIMIT_ENV: "300Mi"}
    argv = quantize_argv(models[1], tmp_path / "out", calibration(tmp_path), "cpu:0,1", "w8a8_dynamic")
    proc = subprocess.run([sys.executable, "-m", "quantjob.cli", *argv], check=False, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "not enough memory on cpu: rank 0 (4 samples, " in proc.stderr
    assert f"{LIMIT_ENV}=300Mi allows 300.0 MiB" in proc.stderr
    assert not (tmp_path / "out").exists()


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quantjob.cli", "validate", *args], check=False, env=child_env(),
                          text=True, capture_output=True, timeout=120)


def test_validate_prints_the_estimate_per_rank(models: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fp8 = models[1]
    done = _validate("--model_path", str(fp8), "--devices", "3", "--calib_samples", "10", "--max_length", "64")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{fp8}: 2 decoder layers (FP8, counted dequantized to bf16); largest layer 0.1 MiB")
    assert [line.split(":")[0].strip() for line in lines[1:4]] == ["rank 0 (4 samples, 256 tokens)",
                                                                   "rank 1 (3 samples, 192 tokens)",
                                                                   "rank 2 (3 samples, 192 tokens)"]
    assert lines[-1].startswith(f"{fp8}: peak per rank about ") and "on 3 cpu device(s)" in lines[-1]
    # the refusals in this process: the command line ran above, and each process start costs seconds
    # (tens of seconds on a loaded 2-core CI machine)
    capsys.readouterr()
    assert main(["validate", "--model_path", str(fp8), "--memory_limit", "64Mi"]) == 1
    assert "but --memory_limit 64Mi allows 64.0 MiB" in capsys.readouterr().out
    assert main(["validate", "--model_path", str(tmp_path / "none")]) == 1
    assert "does not exist or is not a directory; fix --model_path" in capsys.readouterr().out
    assert main(["validate"]) == 2


# DeepSeek-V3's shapes (its config.json): hidden 7168, dense intermediate 18432, 256 routed experts and
# 1 shared expert of intermediate 2048, 128 heads, MLA ranks q 1536 / kv 512, head dims 128 (nope),
# 64 (rope), 128 (v), vocab 129280, 61 layers of which the first 3 are dense.
V3 = {"hidden": 7168, "intermediate": 18432, "expert": 2048, "experts": 256, "heads": 128, "q_rank": 1536,
      "kv_rank": 512, "nope": 128, "rope": 64, "v": 128, "vocab": 129280, "layers": 61, "dense": 3}
DOC = Path(__file__).resolve().parents[2] / "docs" / "operator.md"


def _v3_tensors() -> dict[str, TensorInfo]:
    """The tensors of DeepSeek-V3 as the loop sees them (FP8 linears listed dequantized to bf16)."""
    h, heads = V3["hidden"], V3["heads"]

    def info(*shape: int, dtype: str = "BF16") -> TensorInfo:
        return TensorInfo(Path("model.safetensors"), dtype, shape)

    tensors = {"model.embed_tokens.weight": info(V3["vocab"], h)}
    for i in range(V3["layers"]):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": info(h), p + "post_attention_layernorm.weight": info(h),
            p + "self_attn.q_a_proj.weight": info(V3["q_rank"], h),
            p + "self_attn.q_a_layernorm.weight": info(V3["q_rank"]),
            p + "self_attn.q_b_proj.weight": info(heads * (V3["nope"] + V3["rope"]), V3["q_rank"]),
            p + "self_attn.kv_a_proj_with_mqa.weight": info(V3["kv_rank"] + V3["rope"], h),
            p + "self_attn.kv_a_layernorm.weight": info(V3["kv_rank"]),
            p + "self_attn.kv_b_proj.weight": info(heads * (V3["nope"] + V3["v"]), V3["kv_rank"]),
            p + "self_attn.o_proj.weight": info(h, heads * V3["v"])})
        mlps = [(p + "mlp.", V3["intermediate"])] if i < V3["dense"] else \
            [(p + f"mlp.experts.{e}.", V3["expert"]) for e in range(V3["experts"])] + [(p + "mlp.shared_experts.",
                                                                                       V3["expert"])]
        for mlp, width in mlps:
            tensors.update({mlp + "gate_proj.weight": info(width, h), mlp + "up_proj.weight": info(width, h),
                            mlp + "down_proj.weight": info(h, width)})
        if i >= V3["dense"]:
            tensors[p + "mlp.gate.weight"] = info(V3["experts"], h)
            tensors[p + "mlp.gate.e_score_correction_bias"] = info(V3["experts"], dtype="F32")
    return tensors


def test_deepseek_v3_arithmetic_in_operator_doc() -> None:
    sizes = layer_bytes(_v3_tensors(), family_named("llama").adapter, V3["layers"])  # same names: model.layers.{i}.
    moe = sizes.layers[V3["dense"]]
    assert moe == 23_014_573_056 and 2 * 257 * 3 * 7168 * 2048 + 2 * 187_105_280 + 2 * 1_835_008 + 4 * 256 \
        + 2 * 16_384 == moe
    weights, at = weights_peak(sizes)
    dims = Dims(V3["hidden"], V3["intermediate"], V3["heads"])
    peaks = rank_peaks(sizes, dims, [2048] * 128, 16, error_samples=8, accelerator=True)
    worst = max(peaks, key=lambda p: p.total)
    assert (worst.rank, at) == (0, 4)   # the first MoE layer after a MoE layer
    on_cpu = max(rank_peaks(sizes, dims, [2048] * 128, 16, error_samples=8), key=lambda p: p.total)
    text = " ".join(DOC.read_text().split())
    figures = {"one MoE layer": gib(moe), "one dense layer": gib(sizes.layers[0]), "weights at layer 4": gib(weights),
               "codes": gib(sizes.linears[3] // 2), "largest linear": gib(2 * sizes.largest_linear),
               "hidden states": gib(worst.hidden), "scratch": gib(worst.scratch),
               "embedding phase": gib(worst.embedding_phase), "peak": gib(worst.total),
               "host": gib(worst.host_total or 0), "margin": gib(64 * 2 ** 30 - worst.total),
               "cpu": gib(on_cpu.total)}
    assert figures == {"one MoE layer": "21.43 GiB", "one dense layer": "1.09 GiB", "weights at layer 4": "42.87 GiB",
                       "codes": "10.72 GiB", "largest linear": "252.0 MiB", "hidden states": "308.0 MiB",
                       "scratch": "2.53 GiB", "embedding phase": "1.94 GiB", "peak": "46.45 GiB",
                       "host": "22.18 GiB", "margin": "17.55 GiB", "cpu": "68.01 GiB"}
    for figure in figures.values():
        assert figure in text, figure
    assert f"{moe:,} bytes in bf16" in text
    check_fits(peaks, Capacity(64 * 2 ** 30, "64Gi"), "npu:0", Capacity(24 * 2 ** 30, "24Gi"))
    with pytest.raises(QuantJobError, match=r"a rank needs 22.18 GiB .* but 16Gi allows 16.00 GiB"):
        check_fits(peaks, Capacity(64 * 2 ** 30, "64Gi"), "npu:0", Capacity(16 * 2 ** 30, "16Gi"))
    with pytest.raises(QuantJobError, match=r"memory 68.01 GiB .* but 64Gi allows 64.00 GiB"):
        check_fits([on_cpu], Capacity(64 * 2 ** 30, "64Gi"), "cpu")
