"""Lazy access to a model's safetensors weights: which file holds each tensor, validated headers,
loading a chosen set of tensors, and a one-thread prefetcher for the next decoder layer.

Nothing here reads tensor data until ``load`` is called; opening a checkpoint reads only headers,
and checks them against the file sizes so a truncated or corrupt file fails before any work.
Tensors are copied with positioned reads, never memory-mapped, so a run's memory does not grow
with the pages of the checkpoint it has touched.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.fp8 import FP8_DTYPES, SCALE_SUFFIX, Fp8Blocks, read_dequantized, scale_grid
from quantjob.worker.model.safetensors_stream import read_tensor, torch_dtype

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_REDOWNLOAD = "re-copy or re-download the model"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are and what ``load_tensor`` returns.

    With ``scale`` set (an FP8 block-scaled weight, ``quantjob.worker.model.fp8``) the bytes at ``offset``
    are FP8 (``stored_dtype``) and ``dtype`` is what they load as: dequantized with ``scale`` (its
    float32 ``weight_scale_inv``) per ``block``. Such a tensor cannot be copied byte for byte.
    """

    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0    # absolute byte offset of the tensor's data in ``file``
    nbytes: int = 0    # bytes stored at ``offset``
    scale: TensorInfo | None = None
    block: tuple[int, int] | None = None
    stored_dtype: str | None = None   # set with ``scale``: the dtype of the bytes at ``offset``

    @property
    def loaded_nbytes(self) -> int:
        """Bytes of the tensor ``load_tensor`` returns (after any dequantization)."""
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel * _DTYPE_BYTES[self.dtype]


def read_header(file: Path) -> dict[str, TensorInfo]:
    """Tensor names -> info from one safetensors file, with sizes checked against the file."""
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise QuantJobError(f"{file}: truncated safetensors file ({size} bytes); {_REDOWNLOAD}")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise QuantJobError(f"{file}: corrupt or truncated safetensors header; {_REDOWNLOAD}")
            raw = handle.read(header_len)
    except OSError as error:
        raise QuantJobError(f"{file}: cannot read ({error.strerror}); check the path and its permissions") from error
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QuantJobError(f"{file}: corrupt safetensors header (not JSON); {_REDOWNLOAD}") from error
    if not isinstance(header, dict):
        raise QuantJobError(f"{file}: corrupt safetensors header; {_REDOWNLOAD}")
    data_len = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            numel = 1
            for dim in shape:
                numel *= dim
            valid = dtype in _DTYPE_BYTES and 0 <= begin <= end and end - begin == numel * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError) as error:
            raise QuantJobError(f"{file}: corrupt header entry for tensor {name!r}; {_REDOWNLOAD}") from error
        if not valid:
            raise QuantJobError(f"{file}: corrupt header entry for tensor {name!r}; {_REDOWNLOAD}")
        if end > data_len:
            raise QuantJobError(f"{file}: truncated: tensor {name!r} ends at byte {end} of {data_len} data bytes; "
                                f"{_REDOWNLOAD}")
        tensors[name] = TensorInfo(file, dtype, shape, 8 + header_len + begin, end - begin)
    _check_layout(file, tensors, 8 + header_len, data_len)
    return tensors


def _check_layout(file: Path, tensors: dict[str, TensorInfo], data_start: int, data_len: int) -> None:
    """The tensors tile the data exactly, as the safetensors library requires: in offset order each
    begins where the previous one ends, the first at 0 and the last at the end of the file.
    Overlapping ranges would read one tensor's bytes as another's, and a gap or trailing bytes mean
    a file not written as the header says."""
    position, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].offset, item[1].nbytes)):
        begin = info.offset - data_start
        if begin != position:
            what = (f"overlaps {previous!r}" if begin < position and previous is not None
                    else f"leaves a gap of {begin - position} bytes after "
                         f"{repr(previous) if previous is not None else 'the header'}")
            raise QuantJobError(f"{file}: corrupt safetensors header: tensor {name!r} (data bytes {begin}.."
                                f"{begin + info.nbytes}) {what}; {_REDOWNLOAD}")
        position, previous = begin + info.nbytes, name
    if position != data_len:
        raise QuantJobError(f"{file}: corrupt safetensors file: its tensors cover {position} of {data_len} data "
                            f"bytes (trailing bytes); {_REDOWNLOAD}")


FINGERPRINT_WINDOWS = 16
FINGERPRINT_WINDOW_BYTES = 64 * 1024


def file_fingerprint(file: Path) -> str:
    """What identifies one safetensors file's content, cheaply: sha256 of its size, its header and
    ``FINGERPRINT_WINDOWS`` evenly spaced 64 KiB windows of its data (all of it when smaller).

    A resumed run compares it, so another checkpoint of the same shapes put at the same path is
    seen (its weights differ everywhere), at 1 MiB of reads per file rather than a full hash of a
    model that may hold hundreds of GB. The header was validated by ``read_header``.
    """
    try:
        size = file.stat().st_size
        digest = hashlib.sha256(str(size).encode())
        with file.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            digest.update(handle.read(header_len))
            start = 8 + header_len
            span = size - start
            if span <= FINGERPRINT_WINDOWS * FINGERPRINT_WINDOW_BYTES:
                offsets = [start]
                width = span
            else:
                offsets = [start + (span - FINGERPRINT_WINDOW_BYTES) * i // (FINGERPRINT_WINDOWS - 1)
                           for i in range(FINGERPRINT_WINDOWS)]
                width = FINGERPRINT_WINDOW_BYTES
            for offset in offsets:
                handle.seek(offset)
                digest.update(handle.read(width))
    except OSError as error:
        raise QuantJobError(f"{file}: cannot read ({error.strerror}); check the path and its permissions") from error
    return digest.hexdigest()


def load_tensor(name: str, info: TensorInfo) -> torch.Tensor:
    """One tensor described by ``read_header``, copied into fresh memory (never memory-mapped);
    an FP8 block-scaled weight comes back dequantized to ``info.dtype``."""
    try:
        if info.scale is None or info.block is None or info.stored_dtype is None:
            return read_tensor(info.file, info.offset, info.nbytes, torch_dtype(info.dtype), info.shape)
        scale = load_tensor(name + SCALE_SUFFIX, info.scale)
        stored = torch_dtype(info.stored_dtype)
        rows, cols = info.shape
        return read_dequantized(lambda into: read_tensor(info.file, info.offset, info.nbytes, stored, info.shape,
                                                         into=into),
                                (rows, cols), scale, info.block, torch_dtype(info.dtype))
    except (OSError, EOFError, ValueError) as error:
        raise QuantJobError(f"{info.file}: cannot read tensor {name!r} ({error}); {_REDOWNLOAD}") from error


def _inside_model_dir(model_dir: Path, name: object, what: str) -> None:
    """QuantJobError unless weight file ``name`` lies inside ``model_dir``: a relative path without
    ``..``, and not a link out of it. One exception, the Hugging Face cache's own layout
    (https://huggingface.co/docs/hub/local-cache): ``<repo>/snapshots/<revision>/<file>`` is a link
    to ``<repo>/blobs/<hash>``."""
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if not parts or parts[0] == "/" or ".." in parts or "\\" in str(name) or "\0" in str(name):
        raise QuantJobError(f"{what} is not a file name inside the model directory {model_dir}; a model's weight "
                            f"files must lie in its directory: {_REDOWNLOAD}")
    root, target = model_dir.resolve(), (model_dir / str(name)).resolve()
    in_cache = root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs"
    if root not in target.parents and not in_cache:
        raise QuantJobError(f"{what} leads to {target}, outside the model directory {model_dir} (through a link); "
                            f"copy the weight files into the model directory: {_REDOWNLOAD}")


def fp8_view(stored: dict[str, TensorInfo], fp8: Fp8Blocks) -> dict[str, TensorInfo]:
    """The tensors of an FP8 block-scaled checkpoint as the loop sees them: every FP8 ``.weight``
    paired with its ``.weight_scale_inv`` and loaded as ``fp8.compute_dtype``, the scales gone."""
    view: dict[str, TensorInfo] = {}
    for name, info in stored.items():
        if name.endswith(SCALE_SUFFIX):
            weight = stored.get(name[:-len(SCALE_SUFFIX)])
            if weight is None or weight.dtype not in FP8_DTYPES:
                raise QuantJobError(f"{info.file}: tensor {name!r} has no FP8 weight "
                                    f"{name[:-len(SCALE_SUFFIX)]!r} beside it; {_REDOWNLOAD}")
            continue
        if info.dtype not in FP8_DTYPES:
            view[name] = info
            continue
        scale = stored.get(name + SCALE_SUFFIX)
        if scale is None:
            raise QuantJobError(f"{info.file}: FP8 tensor {name!r} has no {name + SCALE_SUFFIX!r}; config.json "
                                f"declares block-scaled FP8, whose every FP8 weight has its scales; {_REDOWNLOAD}")
        if len(info.shape) != 2 or scale.dtype != "F32" or scale.shape != scale_grid(info.shape, fp8.block):
            raise QuantJobError(
                f"{scale.file}: {name + SCALE_SUFFIX!r} is {scale.dtype} {list(scale.shape)} for the weight "
                f"{list(info.shape)}; with weight_block_size {list(fp8.block)} it must be F32 "
                f"{list(scale_grid(info.shape, fp8.block)) if len(info.shape) == 2 else '[rows, columns]'} "
                f"(check config.json's weight_block_size, or {_REDOWNLOAD})")
        view[name] = TensorInfo(info.file, fp8.compute_dtype, info.shape, info.offset, info.nbytes,
                                scale=scale, block=fp8.block, stored_dtype=info.dtype)
    return view


class Checkpoint:
    """Every tensor of a model directory (single file or sharded with an index), read lazily.

    ``stored`` holds every tensor of the files; ``tensors`` what the loop sees: the same, except
    that with ``fp8`` (config.json's block-scaled FP8, ``quantjob.worker.model.fp8.fp8_blocks``) the FP8
    weights load dequantized and their ``weight_scale_inv`` tensors are not listed."""

    def __init__(self, model_dir: Path, fp8: Fp8Blocks | None = None) -> None:
        self.model_dir = model_dir
        self.fp8 = fp8
        self.stored: dict[str, TensorInfo] = {}
        for file in self._files():
            self.stored.update(read_header(file))
        self.tensors = fp8_view(self.stored, fp8) if fp8 is not None else dict(self.stored)

    def _files(self) -> list[Path]:
        index = self.model_dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
                raise QuantJobError(f"{index}: unreadable or has no 'weight_map'; {_REDOWNLOAD}") from error
            for name in names:
                _inside_model_dir(self.model_dir, name, f"{index}: weight_map entry {name!r}")
            missing = [name for name in names if not (self.model_dir / name).is_file()]
            if missing:
                raise QuantJobError(f"{index} lists {', '.join(missing)}, missing in {self.model_dir}; {_REDOWNLOAD}")
            return [self.model_dir / name for name in names]
        single = self.model_dir / SINGLE_NAME
        if single.is_file():
            _inside_model_dir(self.model_dir, SINGLE_NAME, str(single))
            return [single]
        found = sorted(self.model_dir.glob("*.safetensors"))
        if len(found) == 1:
            _inside_model_dir(self.model_dir, found[0].name, str(found[0]))
            return found
        raise QuantJobError(f"{self.model_dir}: no {SINGLE_NAME} or {INDEX_NAME}; point --model_path at a "
                            "Hugging Face model directory with safetensors weights")

    @property
    def files(self) -> list[Path]:
        return sorted({info.file for info in self.stored.values()})

    def names_under(self, prefix: str) -> list[str]:
        """Tensor names that start with ``prefix`` (e.g. ``model.layers.3.``), sorted."""
        return sorted(name for name in self.tensors if name.startswith(prefix))

    def load(self, names: Iterable[str], device: torch.device) -> dict[str, torch.Tensor]:
        """The named tensors on ``device``: exactly as stored, or dequantized (FP8 weights)."""
        out: dict[str, torch.Tensor] = {}
        for name in names:
            if name not in self.tensors:
                raise QuantJobError(f"{self.model_dir}: tensor {name!r} is missing from the safetensors files; "
                                    f"{_REDOWNLOAD}")
            out[name] = load_tensor(name, self.tensors[name]).to(device)
        return out


class Prefetcher:
    """Loads one set of tensors on a background thread while the caller computes; ``verify(key,
    tensors)``, when given, checks them on that thread too (its exception comes out of ``take``).

    On an accelerator the tensors are read into host memory (pinned where the runtime allows,
    ``quantjob.worker.group.device.staging_device``) and moved to ``device`` one by one when taken, so
    the device never holds the layer read ahead beside the one it computes (for DeepSeek-V3 a MoE
    layer is 21.4 GiB); on cpu they are read straight into place (the loop submits the next layer
    only once the current one is released there: ``group.device.reads_ahead_during_compute``)."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device,
                 verify: Callable[[str, dict[str, torch.Tensor]], None] | None = None) -> None:
        from quantjob.worker.group.device import staging_device

        self._checkpoint = checkpoint
        self._device = device
        self._stage = staging_device(device)
        self._verify = verify
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantjob-prefetch")
        self._pending: dict[str, Future[dict[str, torch.Tensor]]] = {}

    def _load(self, key: str, names: list[str]) -> dict[str, torch.Tensor]:
        from quantjob.worker.group.device import pinned

        tensors = {name: pinned(tensor, self._device)
                   for name, tensor in self._checkpoint.load(names, self._stage).items()}
        if self._verify is not None:
            self._verify(key, tensors)
        return tensors

    def submit(self, key: str, names: list[str]) -> None:
        if key not in self._pending:
            self._pending[key] = self._pool.submit(self._load, key, names)

    def take(self, key: str, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors submitted under ``key`` on ``device`` (loading now when nothing was submitted)."""
        self.submit(key, names)
        tensors = self._pending.pop(key).result()
        if self._stage == self._device:
            return tensors
        moved: dict[str, torch.Tensor] = {}
        for name in list(tensors):  # each host copy is dropped once its device copy exists
            moved[name] = tensors.pop(name).to(self._device)
        return moved

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
