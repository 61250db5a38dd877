"""The staging area: one committed record per decoder layer.

``<save_path>/.quantjob-staging/`` holds

- ``run.json``: ``{"run_id", "num_layers"}`` of the run that owns the directory;
- per record ``layer-00007.safetensors`` (the format's output tensors plus the exact quantization
  terms under ``record/...`` names, for replay; a term the output already holds bit for bit, such
  as ascendv1's int8 ``weight``, is not stored twice) and ``layer-00007.json`` (run_id, the output
  tensor names with their format tags, the linears, the float tensor names and a sha256 of every
  tensor's bytes). Both are written under temporary names and moved into place with
  ``os.replace``; the json goes last and is the record's commit;
- ``extra/<name>.json``: files handed to ``write_json`` (only the names in ``EXTRA_FILES``).

Nothing under the output directory is written through a symbolic link: files are opened with
``O_NOFOLLOW`` and the directories the saver makes must be real directories (``real_directory``),
so a link planted where a file or directory of ours is expected is refused with its name instead
of changing what it points at.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from quantjob.worker.errors import QuantJobError
from quantjob.worker.loop.records import LayerOutput, QuantizedLinear
from quantjob.worker.model.safetensors_stream import tensor_sha256, write_file

if TYPE_CHECKING:
    from quantjob.worker.savers.formats import OutputFormat

STAGING_DIR = ".quantjob-staging"
RUN_FILE = "run.json"
EXTRA_DIR = "extra"
TMP_PREFIX = ".tmp-"
# The extra files the runner writes (``quantjob.worker.loop.runner``: ERRORS_FILE, PROVENANCE_FILE): the only
# names ``write_json`` takes, so the names an output holds never come from what a directory contains.
EXTRA_FILES = ("quant_errors.json", "quant_provenance.json")
_RECORD = "record/"
_RAW_FIELDS = ("weight_scale", "weight_offset", "input_scale", "input_offset")


def stem(index: int) -> str:
    return f"layer-{index:05d}"


def link_refused(path: Path) -> QuantJobError:
    return QuantJobError(f"{path} is a symbolic link where quantjob writes its own file or directory; it never "
                         "writes through a link in the output: remove the link, or choose another --save_path")


def open_no_follow(path: Path, flags: int) -> int:
    """``os.open`` that never follows a link at ``path`` itself (QuantJobError naming it)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a link
            raise link_refused(path) from None
        raise


def refuse_link(path: Path) -> None:
    """QuantJobError when ``path`` is a symbolic link (nothing when it is anything else or absent)."""
    if os.path.islink(path):
        raise link_refused(path)


def real_directory(path: Path) -> None:
    """Make ``path`` (its parent exists) or keep it: a directory, never a link to one."""
    refuse_link(path)
    path.mkdir(exist_ok=True)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise QuantJobError(f"{path} is not a directory; quantjob keeps its own files there: remove it, or "
                            "choose another --save_path")


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (never through a link) and fsync it (a rename of it is then never
    of a shorter file)."""
    with os.fdopen(open_no_follow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as handle:
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


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def write_record(staging: Path, out: LayerOutput, run_id: str, fmt: OutputFormat) -> None:
    """Convert one LayerOutput to ``fmt``'s output tensors and commit it to the staging area."""
    tensors: dict[str, torch.Tensor] = {}
    output: list[list[str]] = []
    for item in fmt.layer_tensors(out):
        if item.name in tensors:
            raise ValueError(f"tensor {item.name!r} appears twice in layer {out.index}'s output")
        tensors[item.name] = item.tensor.detach().cpu().contiguous()
        output.append([item.name, item.tag])
    floats = set(out.float_tensors)
    linears: list[dict[str, Any]] = []
    for q in out.quantized:
        if f"{q.name}.weight" in floats or (q.bias is not None and f"{q.name}.bias" in floats):
            raise ValueError(f"linear {q.name!r} is both quantized and a float tensor")
        sources: dict[str, str] = {}
        for field in ("weight_q", "bias", *_RAW_FIELDS):
            value = getattr(q, field)
            if value is None:
                continue
            alias = {"weight_q": f"{q.name}.weight", "bias": f"{q.name}.bias"}.get(field)
            if alias is not None and _same(tensors.get(alias), value):
                sources[field] = alias                    # the output holds it bit for bit
            else:
                sources[field] = f"{_RECORD}{q.name}/{field}"
                tensors[sources[field]] = value.detach().cpu().contiguous()
        linears.append({"name": q.name, "scheme": q.scheme, "dtype": _dtype_name(q.dtype),
                        "group_size": q.group_size, "has_bias": q.bias is not None,
                        "weight_symmetric": q.symmetric_weights(),
                        "act_symmetric": q.symmetric_activations() if q.scheme == "W8A8" else None,
                        "sources": sources})
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
    refuse_link(tmp)  # the stream writer opens it by name
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
        quantized = []
        for lin in meta["linears"]:
            name = lin["name"]
            # records staged before "sources" existed kept weight_q and bias under the output names
            sources: dict[str, str] = lin.get("sources") or {
                "weight_q": f"{name}.weight", **({"bias": f"{name}.bias"} if lin["has_bias"] else {}),
                **{field: f"{_RECORD}{name}/{field}" for field in _RAW_FIELDS
                   if f"{_RECORD}{name}/{field}" in set(handle.keys())}}

            def term(field: str, sources: dict[str, str] = sources) -> torch.Tensor | None:
                key = sources.get(field)
                return handle.get_tensor(key) if key is not None else None

            weight_q, weight_scale, weight_offset = term("weight_q"), term("weight_scale"), term("weight_offset")
            assert weight_q is not None and weight_scale is not None and weight_offset is not None
            quantized.append(QuantizedLinear(
                name=name, scheme=lin["scheme"], weight_q=weight_q, weight_scale=weight_scale,
                weight_offset=weight_offset, bias=term("bias"), dtype=_dtype_of(lin["dtype"]),
                input_scale=term("input_scale"), input_offset=term("input_offset"), group_size=lin["group_size"],
                weight_symmetric=lin.get("weight_symmetric"), act_symmetric=lin.get("act_symmetric")))
        floats = {name: handle.get_tensor(name) for name in meta["float_tensors"]}
    return LayerOutput(index=meta["index"], quantized=quantized, float_tensors=floats)
