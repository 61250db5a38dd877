"""Each rank's peak memory, from the checkpoint headers and the calibration lengths, before any compute.

What the loop (``quantjob.worker.loop.runner``) holds at once, per rank, in the compute dtype (FP8
weights counted dequantized, ``TensorInfo.loaded_nbytes``):

- **weights**: at layer ``i``, the layer itself and its linears' int8 codes (1 byte per weight,
  every linear counted as quantized), and while the layer is rebuilt from its records for the
  error pass (``decoder.quantized_layer``, in place, one linear at a time) one dequantized linear
  beside the float one it replaces; before that, while its processors run, the records of layer
  ``i - 1`` may still be held by the saver's commit thread: ``B_i + codes_i + max(codes_{i-1},
  largest linear)``. On an accelerator layer ``i + 1``, read ahead by the prefetcher
  (``checkpoint.Prefetcher``) while layer ``i`` computes, waits in host memory (``host``: runtime
  + ``B_{i+1}``); on cpu it is read once layer ``i`` is released
  (``group.device.reads_ahead_during_compute``), beside at most layer ``i``'s codes;
- **hidden states** of the rank's own samples (``tokens x hidden``): the layer inputs still needed,
  the float outputs, and the quantized outputs of the error samples; inputs are dropped as their
  output appears, except those a later step needs (``_Loop.kept_inputs``);
- **scratch** of one sample's forward (q/k/v, the attention scores in float32, the MLP's
  intermediates, an observer's float32 copy of a linear's input) or of quantizing the largest
  linear (two float32 copies), whichever is larger;
- the **embedding** table only while the first hidden states are made (it is freed before layer 0
  is read), so the peak is the larger of that phase and the layers';
- on cpu, the **allocator**: what the heap holds beyond the live tensors (``KERNEL_CACHE_BYTES``,
  ``HEAP_SLACK_LAYERS``; measured, see there);
- a fixed **runtime** allowance (the interpreter, torch and the worker's modules on the host), more
  for a rank of a group (the process group and its buffers).

Figures compared with the measured peak RSS in ``bench/memory_estimate.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from quantjob.worker.errors import QuantJobError

if TYPE_CHECKING:
    from quantjob.families.adapter import Adapter
    from quantjob.worker.model.checkpoint import TensorInfo

GiB = 2 ** 30
RUNTIME_BYTES = 512 * 2 ** 20        # interpreter + torch + transformers + the worker, host RSS (measured ~0.4 GiB)
GROUP_BYTES = 256 * 2 ** 20          # a rank of a group: the process group and its buffers (measured ~0.12 GiB on gloo)
# cpu only (the compute device is the host heap): memory glibc's malloc holds that no tensor does,
# measured on bench/bench_moe.py's model (mallinfo2 beside the live tensors at every phase, 8 and 64
# samples, 1 rank, 2026-12-08): the kernels torch's CPU matmuls cache, with both caches capped
# (group.device.limit_kernel_cache: 500 token counts of one bf16 linear leave 31 MiB), and the freed
# blocks of a phase's transient tensors still resident under its peak between the trims (the loop
# trims after every sample's forward and between phases): ~0.85 x the largest decoder layer at most
KERNEL_CACHE_BYTES = 128 * 2 ** 20
HEAP_SLACK_LAYERS = 1.0
LIMIT_ENV = "QUANTJOB_MEMORY_LIMIT"  # bytes one rank may use (a Kubernetes quantity, e.g. 60Gi); "none": no check
_CGROUP_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
_UNLIMITED = 2 ** 60                 # cgroup v1 writes a huge number for "no limit"

Holding = Literal["float", "keep_all", "quantized"]


@dataclass(frozen=True)
class LayerBytes:
    """Byte counts from the headers, in the dtype the loop computes in."""

    dtype_bytes: int
    embedding: int
    layers: tuple[int, ...]          # every tensor of decoder layer i
    linears: tuple[int, ...]         # its 2-D weights (what gets quantized)
    largest_linear: int              # elements of the largest 2-D weight of any layer


def layer_bytes(tensors: Mapping[str, TensorInfo], adapter: Adapter, num_layers: int) -> LayerBytes:
    layers, linears, largest = [], [], 0
    for index in range(num_layers):
        prefix = adapter.layer_prefix(index)
        infos = [info for name, info in tensors.items() if name.startswith(prefix)]
        weights = [info for name, info in tensors.items()
                   if name.startswith(prefix) and name.endswith(".weight") and len(info.shape) == 2]
        layers.append(sum(info.loaded_nbytes for info in infos))
        linears.append(sum(info.loaded_nbytes for info in weights))
        largest = max([largest, *(math.prod(info.shape) for info in weights)])
    embed = tensors.get(f"{adapter.embed}.weight")
    embedding = embed.loaded_nbytes if embed is not None else 0
    dtype_bytes = embed.loaded_nbytes // max(1, math.prod(embed.shape)) if embed is not None else 2
    return LayerBytes(dtype_bytes, embedding, tuple(layers), tuple(linears), largest)


@dataclass(frozen=True)
class Dims:
    """The config.json sizes the activations depend on."""

    hidden: int
    intermediate: int
    heads: int

    @staticmethod
    def of(model_config: Mapping[str, Any]) -> Dims:
        config = model_config.get("text_config") or model_config
        hidden = int(config["hidden_size"])
        intermediate = max(int(config.get(key) or 0) for key in
                           ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"))
        return Dims(hidden, intermediate or 4 * hidden, int(config.get("num_attention_heads") or 1))


@dataclass(frozen=True)
class RankPeak:
    """One rank's estimate, by part (bytes). ``total``: the compute device's peak (on cpu, the
    host's: one memory); ``host_total``: on an accelerator, the host memory the rank needs beside it
    (the runtime and the layer read ahead), None on cpu."""

    rank: int
    samples: int
    tokens: int
    weights: int
    at_layer: int
    hidden: int
    scratch: int
    embedding_phase: int
    runtime: int
    ahead_on_host: int | None = None   # accelerator: the largest layer read ahead, in host memory
    heap: int = 0                      # cpu: KERNEL_CACHE_BYTES + HEAP_SLACK_LAYERS x the largest layer

    @property
    def layers_phase(self) -> int:
        return self.weights + self.hidden + self.scratch

    @property
    def total(self) -> int:
        return self.runtime + self.heap + max(self.embedding_phase, self.layers_phase)

    @property
    def host_total(self) -> int | None:
        return None if self.ahead_on_host is None else self.runtime + self.ahead_on_host

    def explain(self) -> str:
        ahead = ("" if self.ahead_on_host is None else
                 f"; host memory {gib(self.host_total or 0)} = runtime + the layer read ahead "
                 f"{gib(self.ahead_on_host)}")
        heap = f" + allocator {gib(self.heap)}" if self.heap else ""
        where = "device" if self.ahead_on_host is not None else "memory"
        return (f"rank {self.rank} ({self.samples} samples, {self.tokens} tokens): {where} {gib(self.total)} = "
                f"runtime {gib(self.runtime)}{heap} + max(embedding phase {gib(self.embedding_phase)}, layers: weights "
                f"{gib(self.weights)} at layer {self.at_layer} + hidden states {gib(self.hidden)} + scratch "
                f"{gib(self.scratch)}){ahead}")


def gib(count: int) -> str:
    """A byte count for people: GiB with two decimals, MiB below 1 GiB."""
    return f"{count / GiB:.2f} GiB" if count >= GiB else f"{count / 2 ** 20:.1f} MiB"


def weights_peak(sizes: LayerBytes) -> tuple[int, int]:
    """(bytes, layer) of ``max_i (B_i + codes_i + max(codes_{i-1}, largest linear))`` on the compute
    device. No layer read ahead is counted there: on an accelerator it waits in host memory, on cpu
    it is read after layer ``i`` is released (``B_{i+1} + codes_i`` then, less than the sum above).

    ``codes_{i-1}``: the saver commits layer ``i - 1`` on a background thread and holds its records
    until done, at the latest until layer ``i``'s records are handed over (``save`` waits for it),
    so they may share the processors of layer ``i``; the rebuild for the error pass comes after."""
    best, at = 0, 0
    rebuilt = sizes.largest_linear * sizes.dtype_bytes
    codes = [linear // max(1, sizes.dtype_bytes) for linear in sizes.linears]
    for i, own in enumerate(sizes.layers):
        held = own + codes[i] + max(codes[i - 1] if i else 0, rebuilt)
        if held > best:
            best, at = held, i
    return best, at


def rank_peaks(sizes: LayerBytes, dims: Dims, lengths: Sequence[int], world_size: int, *, error_samples: int,
               holding: Holding = "float", runtime: int | None = None, accelerator: bool = False,
               heap: int | None = None) -> list[RankPeak]:
    """Every rank's peak for global samples of ``lengths`` tokens (rank r owns r, r + W, ...);
    ``runtime`` None: ``RUNTIME_BYTES``, plus ``GROUP_BYTES`` for more than one rank; ``accelerator``:
    the compute device is not the host (the read-ahead layer is counted in host memory); ``heap``
    None: on cpu ``KERNEL_CACHE_BYTES + HEAP_SLACK_LAYERS x`` the largest layer, 0 on an accelerator
    (its allocator is not the host heap; not measured there)."""
    if runtime is None:
        runtime = RUNTIME_BYTES + (GROUP_BYTES if world_size > 1 else 0)
    weights, at = weights_peak(sizes)
    if heap is None:
        heap = 0 if accelerator else KERNEL_CACHE_BYTES + int(HEAP_SLACK_LAYERS * max(sizes.layers, default=0))
    ahead = max(sizes.layers[1:], default=0) if accelerator else None
    errors = min(error_samples, len(lengths))
    token = dims.hidden * sizes.dtype_bytes
    peaks = []
    for rank in range(world_size):
        own = [lengths[g] for g in range(rank, len(lengths), world_size)]
        err = [lengths[g] for g in range(rank, errors, world_size)]
        longest = max(own, default=0)
        tokens, err_tokens = sum(own), sum(err)
        held = {"float": tokens + 2 * err_tokens + longest,   # inputs left + outputs, error inputs and outputs
                "keep_all": 2 * tokens + err_tokens,           # every input kept for a second observation
                "quantized": 3 * tokens}[holding]             # inputs, float outputs, quantized outputs
        forward = longest * (4 * dims.hidden + 4 * dims.intermediate) * sizes.dtype_bytes \
            + 4 * dims.heads * longest * longest + 4 * longest * max(dims.hidden, dims.intermediate)
        scratch = max(forward, 8 * sizes.largest_linear)
        peaks.append(RankPeak(rank, len(own), tokens, weights, at, held * token, scratch,
                              sizes.embedding + tokens * token, runtime, ahead, heap))
    return peaks


@dataclass(frozen=True)
class Capacity:
    bytes: int
    source: str


def parse_size(text: str) -> int | None:
    """Bytes from a byte count or a Kubernetes quantity (``60Gi``, ``64G``); None when it is neither."""
    from quantjob.api.kube_rules import parse_quantity

    value = parse_quantity(text.strip())
    return int(value) if value is not None and value > 0 else None


def host_capacity(ranks_on_host: int, env: Mapping[str, str] | None = None) -> Capacity | None:
    """What one rank may use of this host: ``QUANTJOB_MEMORY_LIMIT``, else the container's cgroup
    limit (a pod's ``resources.limits.memory``), else the machine's memory; shared by the ranks of
    this host (the local launcher's). None: the check is switched off (``QUANTJOB_MEMORY_LIMIT=none``)."""
    env = os.environ if env is None else env
    override = env.get(LIMIT_ENV, "").strip()
    if override.lower() == "none":
        return None
    if override:
        value = parse_size(override)
        if value is None:
            raise QuantJobError(f"{LIMIT_ENV}={override!r} is not a memory size; give bytes or a Kubernetes "
                                "quantity (e.g. 60Gi), or none to skip the memory check", exit_code=2)
        return Capacity(value, f"{LIMIT_ENV}={override}")
    found: list[Capacity] = []
    for file in _CGROUP_FILES:
        try:
            text = file.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED:
            found.append(Capacity(int(text), f"the container's memory limit ({file})"))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                found.append(Capacity(int(line.split()[1]) * 1024, "the host's memory (/proc/meminfo MemTotal)"))
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        return None
    smallest = min(found, key=lambda c: c.bytes)
    if ranks_on_host > 1:
        return Capacity(smallest.bytes // ranks_on_host, f"{smallest.source} shared by {ranks_on_host} ranks")
    return smallest


def check_fits(peaks: Sequence[RankPeak], capacity: Capacity | None, device: str,
               host: Capacity | None = None) -> None:
    """Refuse, with the arithmetic, a run whose largest rank peak exceeds what one rank may use
    (``capacity``: the compute device's; ``host``: on an accelerator, the host memory of one rank).
    Every rank checks every rank's peak, so all refuse alike (same memory on every rank assumed)."""
    if not peaks:
        return
    worst = max(peaks, key=lambda p: p.total)
    if capacity is not None and worst.total > capacity.bytes:
        weights_alone = worst.runtime + worst.heap + worst.weights + worst.scratch
        advice = ("a device or pod with more memory (the runtime, a decoder layer with its int8 codes "
                  "and the scratch alone "
                  f"need {gib(weights_alone)} per rank, whatever the number of ranks)"
                  if weights_alone > capacity.bytes else
                  "more ranks, fewer --calib_samples or a shorter --max_length (fewer hidden states per rank), "
                  "or a device or pod with more memory")
        raise QuantJobError(f"not enough memory on {device}: {worst.explain()}, but {capacity.source} allows "
                            f"{gib(capacity.bytes)}; use {advice}. {LIMIT_ENV}=none skips this check")
    needs = max((p.host_total or 0 for p in peaks), default=0)
    if host is not None and needs > host.bytes:
        raise QuantJobError(f"not enough host memory beside {device}: a rank needs {gib(needs)} (the runtime and "
                            f"the next decoder layer, read ahead into host memory), but {host.source} allows "
                            f"{gib(host.bytes)}; give the pod more memory (resources.limits.memory). "
                            f"{LIMIT_ENV}=none skips this check")
