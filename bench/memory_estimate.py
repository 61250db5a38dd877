"""The worker's memory estimate against the peak RSS it really reaches, on CPU.

For a model made for it (a random Llama whose decoder layers outweigh the interpreter: by default
4 layers of hidden 2048 and intermediate 5632, 103 MB each in bf16, 32 samples of 512 tokens) and
its FP8 block-scaled copy (DeepSeek's layout: F8_E4M3 linears with a float32 ``weight_scale_inv``
per 128 x 128 block), runs ``quantjob quantize --quant_type w8a8_dynamic`` on 1 and 2 ranks under
``bench/maxrss.py`` and prints, per run, the largest rank's estimate (the line the worker logs,
``quantjob.worker.preflight.check_memory``) beside the largest rank's measured peak RSS.

``python -m bench.memory_estimate [--layers 4 --hidden 2048 --intermediate 5632 --samples 32 --seq 512]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

from bench.measure import run_measured, thread_env
from bench.models import ModelShape, calibration_file, model_dir
from bench.runs import REPO_ROOT

_ESTIMATE = re.compile(r"memory estimate, largest rank: rank \d+ \(.*?\): (?:memory |device )?(?P<value>[0-9.]+) (?P<unit>GiB|MiB) = "
                       r"(?P<detail>.*?); allowed")
MiB = 2 ** 20


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_fp8_copy(source: Path, target: Path, block: int = 128) -> Path:
    """``source`` with every decoder linear stored as F8_E4M3 + float32 ``weight_scale_inv`` per block."""
    import torch
    from safetensors.torch import load_file, save_file

    if (target / "config.json").is_file():
        return target
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(source.glob("*.safetensors")):
        tensors.update(load_file(file))
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not (name.startswith("model.layers.") and name.endswith("proj.weight")):
            out[name] = tensor
            continue
        rows, cols = tensor.shape
        pad = torch.nn.functional.pad(tensor.float(), (0, -cols % block, 0, -rows % block))
        tiles = pad.view(pad.shape[0] // block, block, pad.shape[1] // block, block)
        scale = (tiles.abs().amax(dim=(1, 3)) / 448.0).clamp(min=1e-12)
        fp8 = (tiles / scale[:, None, :, None]).view(pad.shape)[:rows, :cols].to(torch.float8_e4m3fn)
        out[name], out[name + "_scale_inv"] = fp8.contiguous(), scale.contiguous()
    save_file(out, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [block, block]}
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--ranks", default="1,2", help="world sizes to run (default 1,2)")
    parser.add_argument("--checkpoints", default="bf16,fp8", help="which copies to run (default bf16,fp8)")
    args = parser.parse_args(argv)
    shape = ModelShape(layers=args.layers, hidden=args.hidden, intermediate=args.intermediate, vocab=32000,
                       heads=16, kv_heads=16, outlier_channels=4)
    float_model = model_dir(shape)
    fp8_model = write_fp8_copy(float_model, float_model.with_name(float_model.name + "-fp8"))
    calib = calibration_file(args.samples, args.seq, shape.vocab)
    print(f"CPU: {cpu_model()}; {os.cpu_count()} cores; load average before: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"model {shape.key}; {args.samples} samples x {args.seq} tokens; w8a8_dynamic")
    print(f"{'checkpoint':<10} {'ranks':>5} {'estimate MiB':>13} {'peak RSS MiB':>13} {'est/peak':>9}  estimate parts")
    for label, model in (("bf16", float_model), ("fp8", fp8_model)):
        if label not in args.checkpoints.split(","):
            continue
        for ranks in (int(r) for r in args.ranks.split(",")):
            with tempfile.TemporaryDirectory(prefix="quantjob-mem-") as tmp:
                log = Path(tmp) / "run.log"
                devices = "cpu" if ranks == 1 else "cpu:" + ",".join(str(r) for r in range(ranks))
                env = {**thread_env(1), "QUANTJOB_MEMORY_LIMIT": "none"}
                result = run_measured([sys.executable, "-m", "quantjob.cli", "quantize", "--model_path", str(model),
                                       "--save_path", str(Path(tmp) / "out"), "--device", devices,
                                       "--quant_type", "w8a8_dynamic", "--calib_file", str(calib),
                                       "--calib_samples", str(args.samples), "--max_length", str(args.seq)],
                                      env=env, log_path=log, cwd=REPO_ROOT)
                found = _ESTIMATE.search(log.read_text())
                if found is None:
                    raise SystemExit(f"{log}: no memory estimate line")
                estimate = float(found["value"]) * (1024 if found["unit"] == "GiB" else 1)
                peak = result.max_rank_peak_bytes() / MiB
                print(f"{label:<10} {ranks:>5} {estimate:>13.0f} {peak:>13.0f} {estimate / peak:>9.2f}  "
                      f"{found['detail']}")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs share this machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
