"""The device module: parsing ``--device``, backends, visibility, and the lazy torch_npu branch."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantjob.worker.group import device
from quantjob.worker.group.device import DeviceSpec, parse_devices


@pytest.mark.parametrize(("text", "expected"), [
    ("cpu", DeviceSpec("cpu", (0,))),
    ("cpu:0,1", DeviceSpec("cpu", (0, 1))),
    ("npu:0,1,2,3", DeviceSpec("npu", (0, 1, 2, 3))),
    ("cuda:0", DeviceSpec("cuda", (0,))),
    (" NPU:4, 5 ", DeviceSpec("npu", (4, 5))),
])
def test_parse_devices(text: str, expected: DeviceSpec) -> None:
    spec = parse_devices(text)
    assert spec == expected
    assert spec.count == len(expected.indices)


@pytest.mark.parametrize("text", ["gpu:0", "cpu:", "cpu:a", "cpu:0,,1", "", "npu:0;1", "cpu:0,0"])
def test_parse_devices_rejects_with_flag_and_form(text: str) -> None:
    with pytest.raises(ValueError, match="--device") as info:
        parse_devices(text)
    assert "npu:0,1" in str(info.value) or "each index once" in str(info.value)


def test_str_round_trips() -> None:
    assert parse_devices(str(parse_devices("npu:0,2"))) == DeviceSpec("npu", (0, 2))


def test_backends() -> None:
    assert [device.backend_for(t) for t in ("npu", "cuda", "cpu")] == ["hccl", "nccl", "gloo"]
    # accelerator groups also carry gloo: error sums and saver objects are host tensors
    assert [device.group_backend(t) for t in ("npu", "cuda", "cpu")] == ["cpu:gloo,npu:hccl", "cpu:gloo,cuda:nccl",
                                                                         "gloo"]
    with pytest.raises(ValueError, match="unknown device type 'tpu'"):
        device.backend_for("tpu")


def test_cpu_calls_are_no_ops() -> None:
    cpu = device.torch_device("cpu", 3)
    assert cpu == torch.device("cpu")
    device.synchronize(cpu)
    device.empty_cache(cpu)
    assert device.peak_memory_bytes(cpu) is None


def test_visible_devices_env() -> None:
    assert device.visible_devices_env("cpu", 1) == {}
    assert device.visible_devices_env("npu", 2) == {"ASCEND_RT_VISIBLE_DEVICES": "2"}
    assert device.visible_devices_env("cuda", 1) == {"CUDA_VISIBLE_DEVICES": "1"}
    # Indices count within an inherited restriction, as torch counts them.
    assert device.visible_devices_env("cuda", 1, {"CUDA_VISIBLE_DEVICES": "4,6"}) == {"CUDA_VISIBLE_DEVICES": "6"}
    with pytest.raises(ValueError, match="only 2 device"):
        device.visible_devices_env("npu", 2, {"ASCEND_RT_VISIBLE_DEVICES": "0,1"})


def test_cuda_without_cuda_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        device.torch_device("cuda", 0)


# A stand-in for torch_npu: importing it registers the "npu" device type and ``torch.npu``, as the
# real package does. It runs in a child process because the registration cannot be undone.
FAKE_TORCH_NPU = """
import types, torch
torch.utils.rename_privateuse1_backend("npu")
calls = []
torch.npu = types.SimpleNamespace(
    set_device=lambda i: calls.append(("set_device", i)),
    synchronize=lambda d=None: calls.append(("synchronize", str(d))),
    empty_cache=lambda: calls.append(("empty_cache", None)),
    max_memory_allocated=lambda d=None: 1234,
)
"""

NPU_SCRIPT = """
import sys
from quantjob.worker.group import device
assert "torch_npu" not in sys.modules, "imported before an npu device was asked for"
dev = device.torch_device("npu", 1)
assert "torch_npu" in sys.modules
assert (dev.type, dev.index) == ("npu", 1), dev
device.synchronize(dev)
device.empty_cache(dev)
assert device.peak_memory_bytes(dev) == 1234
calls = sys.modules["torch_npu"].calls
assert calls == [("set_device", 1), ("synchronize", "npu:1"), ("empty_cache", None)], calls
"""


def test_npu_branch_uses_torch_npu_lazily(tmp_path: Path) -> None:
    (tmp_path / "torch_npu.py").write_text(FAKE_TORCH_NPU)
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path), "PATH": ""}
    result = subprocess.run([sys.executable, "-c", NPU_SCRIPT], check=False, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_npu_without_torch_npu_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import fails
    with pytest.raises(RuntimeError, match="torch_npu"):
        device.torch_device("npu", 0)
    with pytest.raises(RuntimeError, match="torch_npu"):
        device.load_extension("npu")
    device.load_extension("cpu")  # nothing to load


def test_torch_npu_not_imported_for_cpu() -> None:
    code = ("import sys; from quantjob.worker.group import device, distributed, launcher; "
            "device.torch_device('cpu'); device.load_extension('cpu'); "
            "assert 'torch_npu' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})


def test_the_kernel_cache_caps_are_defaults_the_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.worker.group.device import KERNEL_CACHE_ENV, MATMUL_CACHE_ENV, limit_kernel_cache

    monkeypatch.delenv(KERNEL_CACHE_ENV, raising=False)
    monkeypatch.delenv(MATMUL_CACHE_ENV, raising=False)
    limit_kernel_cache()
    assert (os.environ[KERNEL_CACHE_ENV], os.environ[MATMUL_CACHE_ENV]) == ("64", "16")
    monkeypatch.setenv(KERNEL_CACHE_ENV, "512")
    monkeypatch.setenv(MATMUL_CACHE_ENV, "128")
    limit_kernel_cache()
    assert (os.environ[KERNEL_CACHE_ENV], os.environ[MATMUL_CACHE_ENV]) == ("512", "128")


def test_the_matmul_cache_cap_keeps_heap_flat_over_many_token_counts() -> None:
    """A MoE expert sees a new token count on every forward: with the caps torch's bf16 linear
    keeps a bounded number of kernels (at torch's defaults 500 token counts leave ~150 MiB)."""
    code = ("import ctypes, torch\n"
            "from quantjob.worker.group.device import limit_kernel_cache\n"
            "limit_kernel_cache(); torch.set_num_threads(1)\n"
            "class MI(ctypes.Structure):\n"
            "    _fields_ = [(n, ctypes.c_size_t) for n in 'a b c d e f g inuse i j'.split()]\n"
            "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = MI\n"
            "w = torch.randn(512, 1024, dtype=torch.bfloat16)\n"
            "def run(): [torch.nn.functional.linear(torch.ones(m, 1024, dtype=torch.bfloat16), w) for m in range(1, 1200, 4)]\n"
            "run(); before = libc.mallinfo2().inuse; run(); run()\n"
            "first = libc.mallinfo2().inuse\n"
            "[torch.nn.functional.linear(torch.ones(m, 1024, dtype=torch.bfloat16), w) for m in range(2, 1200, 4)]\n"
            "print((libc.mallinfo2().inuse - first) / 2**20)\n")
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("glibc's mallinfo2 is not available here")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    grown_mib = float(result.stdout.strip())
    assert grown_mib < 40, f"300 new token counts grew the heap in use by {grown_mib:.0f} MiB"


@pytest.mark.parametrize("value", ["0", "-3", "lots"])
def test_a_matmul_cache_size_that_would_crash_torch_is_refused_by_name(value: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from quantjob.api.exit_codes import INPUT
    from quantjob.worker.errors import QuantJobError
    from quantjob.worker.group.device import MATMUL_CACHE_ENV, limit_kernel_cache

    monkeypatch.setenv(MATMUL_CACHE_ENV, value)
    with pytest.raises(QuantJobError, match=f"{MATMUL_CACHE_ENV}='{value}' in the environment: .*unset it") as caught:
        limit_kernel_cache()
    assert caught.value.exit_code == INPUT  # a user error: the operator fails the job, no pod crash loop
