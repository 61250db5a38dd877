"""Assemble the final ascendv1 output from the staging area, every rank writing its share.

The final header is known before any tensor byte is copied (names, dtypes and shapes come from
the staged records and the source checkpoint), so ``plan_output`` (rank 0) lays out every weight
file, ``create_parts`` (rank 0) writes each header and sizes the file, and then every rank
``write_share``s the bytes of the tensors it owns at their offsets: the decoder layers it
committed, and a balanced share of the tensors outside the decoder layers (embedding, final
norm, lm_head), which are copied straight from the source checkpoint. The bytes do not depend on
who wrote them, so the files are the same for any world size.

Order of work, so that an interrupted run never looks complete: weight files, index, copied
model files and extra JSON files are written under ``.quantjob-tmp-`` names and then renamed
(``commit_output``, rank 0, after every share is written); ``quant_model_description.json`` (what
vllm-ascend looks for) is written after all of them; ``.quantjob-complete`` (run_id + sha256 of
every file) is written last; then staging is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from quantjob.worker.checkpoint import TensorInfo, read_header
from quantjob.worker.safetensors_stream import TensorSpec, header_bytes, library_order
from quantjob.worker.savers.ascend_tensors import FLOAT, model_quant_type
from quantjob.worker.savers.staging import (
    EXTRA_DIR,
    atomic_write_bytes,
    fsync_dir,
    json_bytes,
    read_meta,
    stem,
    write_synced,
)

WEIGHTS_PREFIX = "quant_model_weights"        # msModelSlim's ASCENDV1_SAFETENSORS_NAME, less ".safetensors"
DESCRIPTION = "quant_model_description.json"  # what vllm-ascend's AscendModelSlimConfig reads
COMPLETE = ".quantjob-complete"
FINAL_TMP = ".quantjob-tmp-"
DESCRIPTION_VERSION = "1.0.0"
ONE_GB = 1 << 30                              # msModelSlim's ONE_GB_FILE_BYTES
COPY_CHUNK = 16 << 20                         # bytes in memory at once while copying a tensor
_COPIED_SUFFIXES = (".json", ".py", ".txt", ".jinja", ".model", ".tiktoken")


@dataclass(frozen=True)
class PlannedTensor:
    spec: TensorSpec
    desc: str
    source: TensorInfo     # where its bytes are now: a staged record, or the source checkpoint
    sha256: str | None     # the staged record's checksum of those bytes (None: a source tensor)
    writer: int            # the rank that copies it into the output


@dataclass(frozen=True)
class PartFile:
    name: str
    header: bytes
    tensors: tuple[tuple[PlannedTensor, int], ...]   # in file order, with the absolute offset

    @property
    def size(self) -> int:
        return len(self.header) + sum(item.spec.nbytes for item, _ in self.tensors)


@dataclass(frozen=True)
class OutputPlan:
    parts: tuple[PartFile, ...]
    split: bool                                      # several parts and an index
    tensors: tuple[PlannedTensor, ...]               # every tensor in description order


def layer_owner(index: int, world_size: int) -> int:
    """The rank that commits decoder layer ``index`` and writes its bytes into the output."""
    return index % world_size


def plan_tensors(staging: Path, num_layers: int, source_tensors: Mapping[str, TensorInfo],
                 world_size: int) -> list[PlannedTensor]:
    """Every output tensor in order: layers by index (names sorted), then the source tensors outside
    the decoder layers (names sorted). Layer ``i``'s tensors are written by its owner ``i % world_size``;
    the source tensors go, largest first, to the rank with the fewest bytes so far."""
    planned: list[PlannedTensor] = []
    load = [0] * world_size
    for index in range(num_layers):
        meta = read_meta(staging, index)
        header = read_header(staging / f"{stem(index)}.safetensors")
        owner = layer_owner(index, world_size)
        for name, desc in sorted(meta["output"]):
            info = header[name]
            planned.append(PlannedTensor(TensorSpec(name, info.dtype, info.shape), desc, info,
                                         meta["sha256"][name], owner))
            load[owner] += info.nbytes
    writers: dict[str, int] = {}
    for name in sorted(source_tensors, key=lambda n: (-source_tensors[n].nbytes, n)):
        writers[name] = min(range(world_size), key=lambda rank: (load[rank], rank))
        load[writers[name]] += source_tensors[name].nbytes
    for name in sorted(source_tensors):
        info = source_tensors[name]
        planned.append(PlannedTensor(TensorSpec(name, info.dtype, info.shape), FLOAT, info, None, writers[name]))
    return planned


def split_parts(tensors: list[PlannedTensor], part_file_size: float | None) -> list[list[PlannedTensor]]:
    """msModelSlim's BufferedSafetensorsWriter rule: start a new part when the pending bytes plus
    the next tensor reach ``part_file_size`` GB. None: everything in one file."""
    if part_file_size is None:
        return [tensors]
    limit = part_file_size * ONE_GB
    parts: list[list[PlannedTensor]] = [[]]
    pending = 0
    for item in tensors:
        size = item.spec.nbytes
        if parts[-1] and pending + size >= limit:
            parts.append([])
            pending = 0
        parts[-1].append(item)
        pending += size
    return parts


def part_names(count: int, split: bool) -> list[str]:
    if not split:
        return [f"{WEIGHTS_PREFIX}.safetensors"]
    width = 5 if count <= 99999 else 0
    return [f"{WEIGHTS_PREFIX}-{i:0{width}d}-of-{count:0{width}d}.safetensors" for i in range(1, count + 1)]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan_output(staging: Path, *, num_layers: int, source_tensors: Mapping[str, TensorInfo],
                part_file_size: float | None, world_size: int) -> OutputPlan:
    """Lay out every weight file: parts, names, headers, each tensor's offset and writer."""
    planned = plan_tensors(staging, num_layers, source_tensors, world_size)
    groups = split_parts(planned, part_file_size)
    names = part_names(len(groups), part_file_size is not None)
    parts: list[PartFile] = []
    for name, items in zip(names, groups):
        ordered = library_order(item.spec for item in items)
        header = header_bytes(ordered)
        by_name = {item.spec.name: item for item in items}
        placed: list[tuple[PlannedTensor, int]] = []
        offset = len(header)
        for spec in ordered:
            placed.append((by_name[spec.name], offset))
            offset += spec.nbytes
        parts.append(PartFile(name, header, tuple(placed)))
    return OutputPlan(tuple(parts), part_file_size is not None, tuple(planned))


def create_parts(save_path: Path, plan: OutputPlan) -> None:
    """Rank 0: every weight file under its temporary name, with its header and its full size."""
    remove_temporaries(save_path)
    for part in plan.parts:
        with open(save_path / (FINAL_TMP + part.name), "wb") as handle:
            handle.write(part.header)
            handle.truncate(part.size)


def _read_range(fd: int, offset: int, nbytes: int, ends_early: str) -> Iterator[bytes]:
    """The bytes ``[offset, offset + nbytes)`` of ``fd``, at most ``COPY_CHUNK`` at a time
    (positioned reads); ValueError(``ends_early``) when the file is shorter."""
    done = 0
    while done < nbytes:
        chunk = os.pread(fd, min(COPY_CHUNK, nbytes - done), offset + done)
        if not chunk:
            raise ValueError(ends_early)
        yield chunk
        done += len(chunk)


def _copy_tensor(item: PlannedTensor, out_fd: int, offset: int) -> str:
    """Copy one tensor's bytes to ``offset`` of ``out_fd`` in chunks; returns their sha256, checked
    against the staged record's."""
    digest = hashlib.sha256()
    source = item.source
    if source.nbytes != item.spec.nbytes:
        raise ValueError(f"tensor {item.spec.name!r} in {source.file} has {source.nbytes} bytes, "
                         f"{item.spec.nbytes} expected")
    in_fd = os.open(source.file, os.O_RDONLY)
    try:
        done = 0
        for chunk in _read_range(in_fd, source.offset, source.nbytes,
                                 f"{source.file} ends early inside tensor {item.spec.name!r}"):
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                written = os.pwrite(out_fd, view, offset + done)
                view = view[written:]
                done += written
    finally:
        os.close(in_fd)
    if item.sha256 is not None and digest.hexdigest() != item.sha256:
        raise ValueError(f"staged tensor {item.spec.name!r} in {source.file} no longer matches its checksum; "
                         "delete that file to redo the layer")
    return digest.hexdigest()


def write_share(save_path: Path, plan: OutputPlan, rank: int) -> dict[str, str]:
    """Copy the tensors ``rank`` writes into the files ``create_parts`` made, and fsync them;
    returns the sha256 of every tensor copied.

    Shares never overlap, so every rank writes its own byte ranges of the same files at once.
    """
    copied: dict[str, str] = {}
    for part in plan.parts:
        mine = [(item, offset) for item, offset in part.tensors if item.writer == rank]
        if not mine:
            continue
        fd = os.open(save_path / (FINAL_TMP + part.name), os.O_WRONLY)
        try:
            for item, offset in mine:
                copied[item.spec.name] = _copy_tensor(item, fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    return copied


def verify_part(path: Path, part: PartFile, expected: Mapping[str, str]) -> str:
    """Read a written weight file back: every tensor's bytes must have the sha256 its writer
    reported (a volume that loses concurrent writes from several pods is caught here, not by
    the inference engine); returns the sha256 of the whole file."""
    whole = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        header = os.pread(fd, len(part.header), 0)
        if header != part.header:
            raise ValueError(f"{path}: the header was overwritten while the ranks wrote the file")
        whole.update(header)
        for item, offset in part.tensors:  # in file order, back to back
            digest = hashlib.sha256()
            for chunk in _read_range(fd, offset, item.spec.nbytes, f"{path} ends inside tensor {item.spec.name!r}"):
                digest.update(chunk)
                whole.update(chunk)
            if digest.hexdigest() != expected[item.spec.name]:
                raise ValueError(f"{path}: tensor {item.spec.name!r} does not hold the bytes its rank wrote; the "
                                 "output volume lost concurrent writes from several pods (use a POSIX shared "
                                 "file system: NFS, CephFS, Lustre; not an object-store mount)")
        if os.fstat(fd).st_size > part.size:
            raise ValueError(f"{path} is longer than its header says")
    finally:
        os.close(fd)
    return whole.hexdigest()


def _model_files(model_dir: Path) -> list[Path]:
    """msModelSlim's copy_files rule (.json/.py/.txt/.jinja, not *index.json) plus tokenizer
    vocabularies (.model, .tiktoken); never a previous quantized description."""
    return sorted(p for p in model_dir.iterdir()
                  if p.is_file() and p.name.endswith(_COPIED_SUFFIXES)
                  and not p.name.endswith("index.json") and p.name != DESCRIPTION)


def _config_bytes(path: Path) -> bytes:
    """config.json as is, unless it carries a ``quantization_config`` (dropped, as msModelSlim does:
    vllm-ascend reads the quantization from the description file)."""
    raw = path.read_bytes()
    config = json.loads(raw)
    removed = config.pop("quantization_config", None) is not None
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        removed = text_config.pop("quantization_config", None) is not None or removed
    return json_bytes(config) if removed else raw


def group_size_of(staging: Path, num_layers: int) -> int:
    sizes = {lin["group_size"] for index in range(num_layers)
             for lin in read_meta(staging, index)["linears"] if lin["group_size"]}
    if len(sizes) > 1:
        raise ValueError(f"linears use different group sizes {sorted(sizes)}; the description holds one")
    return sizes.pop() if sizes else 0


def commit_output(save_path: Path, staging: Path, plan: OutputPlan, copied: Mapping[str, str], *, num_layers: int,
                  model_dir: Path, run_id: str) -> None:
    """Rank 0, once every share is written (``copied``: every tensor's sha256 as its writer copied
    it): the weight files read back and checked, index, copied model files, extra files, renames,
    then the description and the completion marker (see the module doc)."""
    checksums = {part.name: verify_part(save_path / (FINAL_TMP + part.name), part, copied) for part in plan.parts}
    pending = [part.name for part in plan.parts]

    def stage_file(name: str, data: bytes) -> None:
        write_synced(save_path / (FINAL_TMP + name), data)
        checksums[name] = hashlib.sha256(data).hexdigest()
        pending.append(name)

    if plan.split:
        weight_map = {item.spec.name: part.name for part in plan.parts for item, _ in part.tensors}
        index = {"metadata": {"total_size": sum(item.spec.nbytes for item in plan.tensors)},
                 "weight_map": weight_map}
        stage_file(f"{WEIGHTS_PREFIX}.safetensors.index.json", json_bytes(index))
    for path in _model_files(model_dir):
        stage_file(path.name, _config_bytes(path) if path.name == "config.json" else path.read_bytes())
    extra_dir = staging / EXTRA_DIR
    if extra_dir.is_dir():
        for path in sorted(extra_dir.iterdir()):
            if path.name.startswith("."):
                continue
            if path.name in checksums:
                raise ValueError(f"extra file {path.name} would replace a file of the output; "
                                 "fix: write_json under another name")
            stage_file(path.name, path.read_bytes())
    for name in pending:
        os.replace(save_path / (FINAL_TMP + name), save_path / name)
    fsync_dir(save_path)  # every file in place before the description can name them

    description: dict[str, object] = {item.spec.name: item.desc for item in plan.tensors}
    description.update({
        "version": DESCRIPTION_VERSION,
        "model_quant_type": model_quant_type({item.desc for item in plan.tensors}),
        "metadata": {},
        "group_size": group_size_of(staging, num_layers),
        "optional": {},
    })
    data = json_bytes(description)
    atomic_write_bytes(save_path / DESCRIPTION, data)
    checksums[DESCRIPTION] = hashlib.sha256(data).hexdigest()
    marker = {"run_id": run_id, "files": dict(sorted(checksums.items()))}
    atomic_write_bytes(save_path / COMPLETE, json_bytes(marker))
    fsync_dir(save_path)
    shutil.rmtree(staging)


def remove_temporaries(save_path: Path) -> None:
    for path in save_path.glob(FINAL_TMP + "*"):
        path.unlink()


def remove_output(save_path: Path) -> None:
    """Delete a previous output (for --overwrite): the files its marker lists, the description,
    the weight files, the marker and leftover temporaries. Other files in the directory are left
    alone, and so is staging (``prepare_output`` decides about it by its run id)."""
    names = {DESCRIPTION, COMPLETE}
    marker = save_path / COMPLETE
    if marker.is_file():
        try:
            names.update(json.loads(marker.read_text(encoding="utf-8")).get("files", {}))
        except (OSError, ValueError):
            pass
    names.update(p.name for p in save_path.glob(f"{WEIGHTS_PREFIX}*.safetensors*"))
    for name in sorted(names):
        path = save_path / name
        if path.is_file():
            path.unlink()
    remove_temporaries(save_path)


def verify_complete(save_path: Path) -> str | None:
    """None when the marker's checksums all match the files; otherwise the first problem."""
    try:
        marker = json.loads((save_path / COMPLETE).read_text(encoding="utf-8"))
        for name, digest in marker["files"].items():
            if _sha256_file(save_path / name) != digest:
                return f"{save_path / name} does not match its checksum"
    except (OSError, ValueError, KeyError) as err:
        return f"{save_path / COMPLETE}: {err}"
    return None
