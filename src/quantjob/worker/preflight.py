"""What the worker checks before any compute, on every rank alike (every rank reads the same
headers, so every rank refuses the same run with the same message, and none is left waiting).

- ``preflight``: the config against the checkpoint's headers: processors the worker runs,
  per_group widths, an ``lm_head`` request and the outputs' load rules with the model's config.json
  (also refused at admission, by ``quantjob.api.check``);
- ``check_layout``: every checkpoint tensor against the model skeleton built from config.json:
  names and shapes, one floating dtype for the embedding and the decoder layers;
- ``check_memory``: every rank's peak memory (``quantjob.worker.model.memory_estimate``) against what
  one rank may use: the device's memory, or on cpu the pod's (cgroup) or host's memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from quantjob.api.globs import names_literally
from quantjob.api.rules_output import output_problems
from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.adapters import Adapter
from quantjob.worker.model.checkpoint import Checkpoint
from quantjob.worker.model.memory_estimate import (
    LIMIT_ENV,
    Capacity,
    Dims,
    Holding,
    check_fits,
    gib,
    host_capacity,
    layer_bytes,
    rank_peaks,
)
from quantjob.worker.processors import Preflight, processor_for

if TYPE_CHECKING:
    import torch

    from quantjob.worker.loop.runner import WorkerJob
    from quantjob.worker.model.decoder import Skeleton

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_FIX = "check --model_type against the checkpoint, or re-copy the model"


def _weight_shapes(checkpoint: Checkpoint, adapter: Adapter,
                   model_config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Module name -> weight shape for every 2-D weight under the decoder layers (from headers),
    but a MoE router (never a linear) and the layers copied as they are (MTP layers)."""
    layers = int(model_config.get("num_hidden_layers") or 0)
    extra = extra_layer_names(adapter, model_config, layers, checkpoint) if layers else frozenset()
    router = f".{adapter.sparse.router}.weight" if adapter.sparse is not None else None
    return {name[:-len(".weight")]: info.shape for name, info in checkpoint.tensors.items()
            if name.startswith(adapter.layers + ".") and name.endswith(".weight") and len(info.shape) == 2
            and name not in extra and not (router and name.endswith(router))}


def preflight(job: WorkerJob, checkpoint: Checkpoint, adapter: Adapter, model_config: dict[str, Any]) -> None:
    """Problems visible before any compute: processors the worker lacks, shapes, lm_head requests, and
    the outputs' load rules with the model's config.json (``model_config``, as the run read it)."""
    shapes = _weight_shapes(checkpoint, adapter, model_config)
    view = Preflight(shapes, job.config, adapter, frozenset(checkpoint.tensors))
    problems: list[str] = []
    for index, proc in enumerate(job.config.spec.process):
        try:
            entry = processor_for(proc.type)
        except ValueError as error:
            raise QuantJobError(f"spec.process[{index}].type: {error}") from error
        problems.extend(entry.check(proc, f"spec.process[{index}]", view))
    for path, lq in job.config.linear_quants():
        if names_literally(lq.include, adapter.lm_head):
            problems.append(f"{path}.include: quantizing {adapter.lm_head} is not supported; it stays float "
                            f"(remove {adapter.lm_head!r} from include)")
    problems.extend(str(p) for p in output_problems(job.config, model_config, "")
                    if p.severity == "error")
    if problems:
        raise QuantJobError("; ".join(problems))


def _layer_of(name: str, adapter: Adapter) -> str:
    rest = name[len(adapter.layers) + 1:] if name.startswith(adapter.layers + ".") else ""
    index = rest.split(".", 1)[0]
    return f" (decoder layer {index})" if index.isdigit() else ""


def extra_layer_names(adapter: Adapter, model_config: dict[str, Any], num_layers: int,
                      checkpoint: Checkpoint) -> frozenset[str]:
    """The checkpoint's tensors of the layers stored after the decoder layers that config.json
    declares (DeepSeek-V3's multi-token-prediction layers, ``model.layers.{num_hidden_layers}.*``).
    Policy: the loop does not run them (they predict a further token from the last hidden state, not
    the next layer's input); they are copied to the output as stored, float, like the embedding."""
    count = adapter.extra_layers(model_config)
    prefixes = tuple(adapter.layer_prefix(num_layers + i) for i in range(count))
    return frozenset(name for name in checkpoint.tensors if prefixes and name.startswith(prefixes))


def check_layout(skeleton: Skeleton, checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint whose tensors do not fit config.json's model: a missing or unexpected
    decoder-layer tensor, a shape the model does not have, or a dtype other than the model's."""
    adapter = skeleton.adapter
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.model.state_dict().items()}
    inside = adapter.layers + "."
    problems: list[str] = []
    extra = extra_layer_names(adapter, skeleton.config.to_dict(), skeleton.num_layers, checkpoint)
    missing = sorted(name for name in expected if name.startswith(inside) and name not in checkpoint.tensors)
    unexpected = sorted(name for name in checkpoint.tensors
                        if name.startswith(inside) and name not in expected and name not in extra)
    embed = f"{adapter.embed}.weight"
    if embed not in checkpoint.tensors:
        missing.insert(0, embed)
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{' and more' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}{' and more' if len(unexpected) > 3 else ''}")
    for name, info in sorted(checkpoint.tensors.items()):
        shape = expected.get(name)
        if shape is not None and info.shape != shape:
            problems.append(f"tensor {name}{_layer_of(name, adapter)} in {info.file.name} has shape "
                            f"{list(info.shape)}, the model in config.json has {list(shape)}")
            break
    if embed in checkpoint.tensors:
        dtype = checkpoint.tensors[embed].dtype
        if dtype not in FLOAT_DTYPES:
            problems.append(f"tensor {embed} in {checkpoint.tensors[embed].file.name} is {dtype}; a model to "
                            f"quantize holds floating weights ({', '.join(FLOAT_DTYPES)})")
        else:
            for name, info in sorted(checkpoint.tensors.items()):
                if name in extra or (name.endswith(adapter.float_any_dtype) and info.dtype in FLOAT_DTYPES):
                    continue  # copied as they are / a router transformers itself keeps in float32
                if name.startswith(inside) and info.dtype != dtype:
                    problems.append(f"tensor {name}{_layer_of(name, adapter)} in {info.file.name} is {info.dtype} "
                                    f"but {embed} is {dtype}; every decoder-layer tensor must have the model's "
                                    "dtype (an already quantized or a damaged checkpoint?)")
                    break
    if problems:
        raise QuantJobError(f"{checkpoint.model_dir}: the checkpoint does not match config.json: "
                            f"{'; '.join(problems)}; {_FIX}")


def holding(job: WorkerJob) -> Holding:
    """Which hidden states the loop keeps through a layer (``_Loop.kept_inputs``)."""
    if job.next_layer_input == "quantized":
        return "quantized"
    return "keep_all" if any(processor_for(proc.type).reobserves for proc in job.config.spec.process) else "float"


def check_memory(job: WorkerJob, checkpoint: Checkpoint, skeleton: Skeleton, lengths: Sequence[int],
                 world_size: int, device: torch.device) -> None:
    """Refuse a run whose largest rank peak exceeds what one rank may use, before any compute.
    ``lengths``: the token count of every global calibration sample."""
    from quantjob.worker.group.device import total_memory_bytes
    from quantjob.worker.group.launcher import LAUNCHER_PID_ENV

    sizes = layer_bytes(checkpoint.tensors, skeleton.adapter, skeleton.num_layers)
    model_config: dict[str, Any] = skeleton.config.to_dict()
    accelerator = device.type != "cpu"
    peaks = rank_peaks(sizes, Dims.of(model_config), lengths, world_size, error_samples=job.error_samples,
                       holding=holding(job), accelerator=accelerator)
    capacity: Capacity | None
    host: Capacity | None = None
    override = os.environ.get(LIMIT_ENV, "").strip()
    total = total_memory_bytes(device)
    ranks_on_host = world_size if os.environ.get(LAUNCHER_PID_ENV) else 1
    if total is None or override:
        capacity = host_capacity(ranks_on_host)
    else:
        capacity = Capacity(total, f"{device}'s memory")
        if accelerator:
            host = host_capacity(ranks_on_host)
    worst = max(peaks, key=lambda p: p.total)
    logging.getLogger("quantjob.worker").info(
        "memory estimate, largest rank: %s; allowed: %s", worst.explain(),
        f"{gib(capacity.bytes)} ({capacity.source})" if capacity is not None else "not checked")
    check_fits(peaks, capacity, str(device), host)
