"""Our own safetensors I/O: a streaming writer (the header first, then one tensor at a time) and
``read_tensor``, which copies one tensor with plain positioned reads (headers are parsed and
checked by ``quantjob.worker.model.checkpoint.read_header``).

``read_tensor`` never maps a file: a memory map keeps every page it touched resident (and counted in
the process's RSS) until it is closed, which would make the memory of a run grow with the size
of the model. Here memory holds only the tensors the caller keeps.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length,
a compact JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` padded with
spaces to a multiple of 8, then the raw little-endian bytes of every tensor, back to back.

``library_order`` sorts tensors the way ``safetensors.torch.save_file`` does (dtype rank
descending, then name), so a file written here is byte-identical to the library's for the same
tensors; ``tests/worker/test_saver_safetensors_stream.py`` checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch
from typing_extensions import Self

# safetensors' Dtype enum, in declaration order (the order its serializer sorts by, descending).
_DTYPE_RANK = ("BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
               "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64")

_TORCH_TO_ST: dict[torch.dtype, str] = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
    torch.uint16: "U16", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
    torch.uint32: "U32", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
    torch.uint64: "U64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_ST_TO_TORCH = {name: dtype for dtype, name in _TORCH_TO_ST.items()}


def st_dtype(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.bfloat16`` -> ``"BF16"``)."""
    try:
        return _TORCH_TO_ST[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no safetensors name") from None


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name (``"BF16"`` -> ``torch.bfloat16``)."""
    try:
        return _ST_TO_TORCH[name]
    except KeyError:
        raise ValueError(f"safetensors dtype {name!r} is not supported") from None


@dataclass(frozen=True)
class TensorSpec:
    """What the header needs to know about a tensor before its bytes are written."""

    name: str
    dtype: str           # safetensors name, e.g. "I8"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=torch_dtype(self.dtype)).element_size()

    @staticmethod
    def of(name: str, tensor: torch.Tensor) -> TensorSpec:
        return TensorSpec(name, st_dtype(tensor.dtype), tuple(int(d) for d in tensor.shape))


def library_order(specs: Iterable[TensorSpec]) -> list[TensorSpec]:
    """The order ``safetensors.torch.save_file`` lays tensors out in: dtype rank desc, then name."""
    return sorted(specs, key=lambda s: (-_DTYPE_RANK.index(s.dtype), s.name))


def header_bytes(specs: list[TensorSpec]) -> bytes:
    """Length prefix + padded JSON header for tensors laid out in ``specs`` order."""
    header: dict[str, object] = {}
    offset = 0
    for spec in specs:
        if spec.name in header:
            raise ValueError(f"tensor {spec.name!r} appears twice")
        end = offset + spec.nbytes
        header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor (what safetensors stores), without a copy when
    the tensor is contiguous on the CPU; the view keeps its memory alive."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]  # numpy arrays are buffers


def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()


class StreamWriter:
    """Write tensors one at a time, in the order of ``specs``, to ``path``.

    The caller hands each tensor in turn; every tensor is checked against its spec. The file is
    flushed and fsync'ed on close.
    """

    def __init__(self, path: Path, specs: list[TensorSpec]) -> None:
        self.path = path
        self._specs = specs
        self._next = 0
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115  # the writer owns it until close()
        self._file.write(header_bytes(specs))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._specs):
            raise ValueError(f"{self.path}: tensor {name!r} is beyond the {len(self._specs)} announced")
        spec = self._specs[self._next]
        got = TensorSpec.of(name, tensor)
        if got != spec:
            raise ValueError(f"{self.path}: expected {spec}, got {got}")
        self._file.write(tensor_bytes(tensor))
        self._next += 1

    def close(self) -> None:
        """Finish the file. All announced tensors must have been written."""
        if self._file.closed:
            return
        if self._next != len(self._specs):
            self._file.close()
            missing = [s.name for s in self._specs[self._next:]]
            raise ValueError(f"{self.path}: {len(missing)} announced tensors not written: {missing[:3]}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def write_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a whole dict at once, in the library's order."""
    specs = library_order(TensorSpec.of(name, t) for name, t in tensors.items())
    with StreamWriter(path, specs) as writer:
        for spec in specs:
            writer.write(spec.name, tensors[spec.name])


def read_tensor(file: Path, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...],
                into: torch.Tensor | None = None) -> torch.Tensor:
    """The tensor whose ``nbytes`` raw bytes start at absolute ``offset`` of ``file``, in fresh memory
    (or in ``into``, a contiguous uint8 CPU tensor of ``nbytes`` the caller gives).

    Raises EOFError when the file ends early (a truncated file).
    """
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    buffer = torch.empty(nbytes, dtype=torch.uint8) if into is None else into  # every byte is read into it
    view = buffer.numpy().data
    with open(file, "rb", buffering=0) as handle:
        handle.seek(offset)
        done = 0
        while done < nbytes:
            got = handle.readinto(view[done:])
            if not got:
                raise EOFError(f"{file}: ends {nbytes - done} bytes early at offset {offset + done}")
            done += got
    return buffer.view(dtype).reshape(shape)

