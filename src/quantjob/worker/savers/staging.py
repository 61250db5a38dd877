"""The staging area: one committed record per decoder layer.

``<save_path>/.quantjob-staging/`` holds

- ``run.json``: ``{"run_id", "num_layers"}`` of the run that owns the directory;
- per record ``layer-00007.safetensors`` (the output tensors plus the exact quantization terms
  under ``record/...`` names, for replay) and ``layer-00007.json`` (run_id, the output tensor
  names with their description types, the linears, the float tensor names and a sha256 of every
  tensor's bytes). Both are written under temporary names and moved into place with
  ``os.replace``; the json goes last and is the record's commit;
- ``extra/<name>.json``: files handed to ``write_json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from quantjob.worker.records import LayerOutput, QuantizedLinear
from quantjob.worker.safetensors_stream import tensor_sha256, write_file
from quantjob.worker.savers.ascend_tensors import FLOAT, ascend_tensors

STAGING_DIR = ".quantjob-staging"
RUN_FILE = "run.json"
EXTRA_DIR = "extra"
TMP_PREFIX = ".tmp-"
_RECORD = "record/"
_RAW_FIELDS = ("weight_scale", "weight_offset", "input_scale", "input_offset")


def stem(index: int) -> str:
    return f"layer-{index:05d}"


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (a rename of it is then never of a shorter file)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make the renames into directory ``path`` durable (best effort where directories cannot be
    opened or synced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling, fsync'ed, then ``os.replace``."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    write_synced(tmp, data)
    os.replace(tmp, path)


def json_bytes(data: object) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_of(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")  # noqa: TRY004  # a bad name, not a bad type
    return dtype


def write_record(staging: Path, out: LayerOutput, run_id: str) -> None:
    """Convert one LayerOutput to its output tensors and commit it to the staging area."""
    tensors: dict[str, torch.Tensor] = {}
    output: list[list[str]] = []
    linears: list[dict[str, Any]] = []
    for q in out.quantized:
        for item in ascend_tensors(q):
            tensors[item.name] = item.tensor
            output.append([item.name, item.desc])
        for field in _RAW_FIELDS:
            value = getattr(q, field)
            if value is not None:
                tensors[f"{_RECORD}{q.name}/{field}"] = value.detach().cpu().contiguous()
        linears.append({"name": q.name, "scheme": q.scheme, "dtype": _dtype_name(q.dtype),
                        "group_size": q.group_size, "has_bias": q.bias is not None})
    for name, tensor in out.float_tensors.items():
        if name in tensors:
            raise ValueError(f"tensor {name!r} is both quantized output and a float tensor")
        tensors[name] = tensor.detach().cpu().contiguous()
        output.append([name, FLOAT])
    meta = {
        "run_id": run_id,
        "index": out.index,
        "output": output,
        "linears": linears,
        "float_tensors": list(out.float_tensors),
        "sha256": {name: tensor_sha256(t) for name, t in tensors.items()},
    }
    name = stem(out.index)
    weights = staging / f"{name}.safetensors"
    tmp = weights.with_name(TMP_PREFIX + weights.name)
    write_file(tmp, tensors)
    os.replace(tmp, weights)
    atomic_write_bytes(staging / f"{name}.json", json_bytes(meta))


def read_meta(staging: Path, index: int) -> dict[str, Any]:
    with open(staging / f"{stem(index)}.json", encoding="utf-8") as handle:
        meta: dict[str, Any] = json.load(handle)
    return meta


def verify_record(staging: Path, index: int, run_id: str) -> str | None:
    """None when the record is committed, belongs to ``run_id`` and every checksum matches;
    otherwise why not."""
    name = stem(index)
    if not (staging / f"{name}.json").is_file():
        return "not committed"
    try:
        meta = read_meta(staging, index)
        if meta.get("run_id") != run_id:
            return f"written by run {meta.get('run_id')!r}"
        expected: dict[str, str] = meta["sha256"]
        with safe_open(str(staging / f"{name}.safetensors"), framework="pt") as handle:
            keys = set(handle.keys())
            if keys != set(expected):
                return "tensor names differ from its record"
            for key, digest in expected.items():
                if tensor_sha256(handle.get_tensor(key)) != digest:
                    return f"checksum mismatch in tensor {key!r}"
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # unreadable = not committed
        return f"unreadable ({err})"
    return None


def load_record(staging: Path, index: int) -> LayerOutput:
    """The LayerOutput as it was saved: same names, dtypes and bits."""
    meta = read_meta(staging, index)
    with safe_open(str(staging / f"{stem(index)}.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())

        def raw(lin: str, field: str) -> torch.Tensor | None:
            key = f"{_RECORD}{lin}/{field}"
            return handle.get_tensor(key) if key in keys else None

        quantized = []
        for lin in meta["linears"]:
            name = lin["name"]
            weight_scale, weight_offset = raw(name, "weight_scale"), raw(name, "weight_offset")
            assert weight_scale is not None and weight_offset is not None
            quantized.append(QuantizedLinear(
                name=name, scheme=lin["scheme"], weight_q=handle.get_tensor(f"{name}.weight"),
                weight_scale=weight_scale, weight_offset=weight_offset,
                bias=handle.get_tensor(f"{name}.bias") if lin["has_bias"] else None,
                dtype=_dtype_of(lin["dtype"]), input_scale=raw(name, "input_scale"),
                input_offset=raw(name, "input_offset"), group_size=lin["group_size"]))
        floats = {name: handle.get_tensor(name) for name in meta["float_tensors"]}
    return LayerOutput(index=meta["index"], quantized=quantized, float_tensors=floats)
