"""Assemble the final output from the staging area, every rank writing its share (any format).

The final header is known before any tensor byte is copied (names, dtypes and shapes come from
the staged records and the source checkpoint), so ``plan_output`` (rank 0) lays out every weight
file, ``create_parts`` (rank 0) writes each header and sizes the file, and then every rank
``write_share``s the bytes of the tensors it owns at their offsets: the decoder layers it
committed, and a balanced share of the tensors outside the decoder layers (embedding, final
norm, lm_head, MTP layers), which are copied straight from the source checkpoint (an FP8
block-scaled one is written dequantized, as the checkpoint loads it). The bytes do not depend on
who wrote them, so the files are the same for any world size.

Order of work, so that an interrupted run never looks complete: weight files, index, copied
model files and extra JSON files are written under ``.quantjob-tmp-`` names and then renamed
(``commit_output``, rank 0, after every share is written); the format's entry file (what a loader
looks for: ``quant_model_description.json``, or compressed-tensors' ``config.json``) is written
after all of them; ``.quantjob-complete`` (run_id + sha256 of every file) is written last; then
staging is removed.

``remove_output`` (``--overwrite``) removes only names a saver of the format writes, directly
inside the output directory: the marker is read as input, never as a list of files to delete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from quantjob.worker.errors import QuantJobError
from quantjob.worker.model.checkpoint import TensorInfo, load_tensor, read_header
from quantjob.worker.model.safetensors_stream import TensorSpec, header_bytes, library_order, tensor_bytes
from quantjob.worker.savers.formats import FLOAT, OutputContents, OutputFormat
from quantjob.worker.savers.staging import (
    EXTRA_DIR,
    EXTRA_FILES,
    atomic_write_bytes,
    fsync_dir,
    json_bytes,
    open_no_follow,
    read_meta,
    real_directory,
    stem,
    write_synced,
)

COMPLETE = ".quantjob-complete"
FINAL_TMP = ".quantjob-tmp-"
SCRATCH_DIR = "scratch"                       # inside staging: the format's private space
ONE_GB = 1 << 30                              # msModelSlim's ONE_GB_FILE_BYTES
# bytes read at once while copying or checking a tensor, into one reused buffer: reads of 16 MiB
# into fresh memory made the finish's copies about 5x slower (a page fault for every 4 KiB read)
COPY_CHUNK = 1 << 20
_COPIED_SUFFIXES = (".json", ".py", ".txt", ".jinja", ".model", ".tiktoken")


@dataclass(frozen=True)
class PlannedTensor:
    spec: TensorSpec
    tag: str               # the format's tag (ascendv1: the description type)
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
        for name, tag in sorted(meta["output"]):
            info = header[name]
            planned.append(PlannedTensor(TensorSpec(name, info.dtype, info.shape), tag, info,
                                         meta["sha256"][name], owner))
            load[owner] += info.nbytes
    writers: dict[str, int] = {}
    for name in sorted(source_tensors, key=lambda n: (-source_tensors[n].loaded_nbytes, n)):
        writers[name] = min(range(world_size), key=lambda rank: (load[rank], rank))
        load[writers[name]] += source_tensors[name].loaded_nbytes
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


def part_names(prefix: str, count: int, split: bool) -> list[str]:
    if not split:
        return [f"{prefix}.safetensors"]
    width = 5 if count <= 99999 else 0
    return [f"{prefix}-{i:0{width}d}-of-{count:0{width}d}.safetensors" for i in range(1, count + 1)]


def index_name(prefix: str) -> str:
    return f"{prefix}.safetensors.index.json"


def weight_file_pattern(prefix: str) -> re.Pattern[str]:
    """Exactly the weight file names ``part_names`` gives for ``prefix`` (and nothing that merely
    starts the same way, such as a user's ``quant_model_weights.safetensors.bak``)."""
    return re.compile(rf"{re.escape(prefix)}(-\d{{5,}}-of-\d{{5,}})?\.safetensors")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan_output(staging: Path, *, num_layers: int, source_tensors: Mapping[str, TensorInfo],
                part_file_size: float | None, world_size: int, weights_prefix: str) -> OutputPlan:
    """Lay out every weight file: parts, names, headers, each tensor's offset and writer."""
    planned = plan_tensors(staging, num_layers, source_tensors, world_size)
    groups = split_parts(planned, part_file_size)
    names = part_names(weights_prefix, len(groups), part_file_size is not None)
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


def stray_weight_files(save_path: Path, plan: OutputPlan, weights_prefix: str) -> list[str]:
    """Weight files (and an index) of the format's names in ``save_path`` that ``plan`` does not
    write: left beside the new weights they would be read as part of the model."""
    pattern = weight_file_pattern(weights_prefix)
    planned = {part.name for part in plan.parts} | ({index_name(weights_prefix)} if plan.split else set())
    with os.scandir(save_path) as entries:
        return sorted(entry.name for entry in entries if entry.name not in planned and
                      (pattern.fullmatch(entry.name) or entry.name == index_name(weights_prefix)))


def create_parts(save_path: Path, plan: OutputPlan, weights_prefix: str) -> None:
    """Rank 0: every weight file under its temporary name, with its header and its full size.
    Refuses (QuantJobError naming them) weight files this plan does not write: the claim removed
    or refused every such file, so one found now was put there while the run went on."""
    stray = stray_weight_files(save_path, plan, weights_prefix)
    if stray:
        raise QuantJobError(f"save path {save_path} holds {', '.join(stray[:5])}, which this run does not write; "
                            "left there they would be read as part of the new model: move them away and run the "
                            "same command again, or choose another --save_path")
    remove_temporaries(save_path)
    for part in plan.parts:
        fd = open_no_follow(save_path / (FINAL_TMP + part.name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "wb") as handle:
            handle.write(part.header)
            handle.truncate(part.size)


def _read_range(fd: int, offset: int, nbytes: int, ends_early: str) -> Iterator[memoryview]:
    """The bytes ``[offset, offset + nbytes)`` of ``fd``, at most ``COPY_CHUNK`` at a time
    (positioned reads), each a view of one reused buffer that the next chunk overwrites;
    ValueError(``ends_early``) when the file is shorter."""
    buffer = memoryview(bytearray(max(1, min(COPY_CHUNK, nbytes))))
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [buffer[:min(len(buffer), nbytes - done)]], offset + done)
        if not got:
            raise ValueError(ends_early)
        yield buffer[:got]
        done += got


def _copy_tensor(item: PlannedTensor, out_fd: int, offset: int) -> str:
    """Copy one tensor's bytes to ``offset`` of ``out_fd`` in chunks; returns their sha256, checked
    against the staged record's."""
    source = item.source
    if source.scale is not None:
        return _write_dequantized(item, out_fd, offset)
    digest = hashlib.sha256()
    if source.nbytes != item.spec.nbytes:
        raise ValueError(f"tensor {item.spec.name!r} in {source.file} has {source.nbytes} bytes, "
                         f"{item.spec.nbytes} expected")
    in_fd = os.open(source.file, os.O_RDONLY)
    try:
        done = 0
        for chunk in _read_range(in_fd, source.offset, source.nbytes,
                                 f"{source.file} ends early inside tensor {item.spec.name!r}"):
            digest.update(chunk)
            view = chunk
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


def _write_dequantized(item: PlannedTensor, out_fd: int, offset: int) -> str:
    """An FP8 block-scaled source tensor (outside the decoder layers, or of an MTP layer) written as
    what the checkpoint loads it as: dequantized to the float dtype of the plan (one tensor at a
    time: DeepSeek-V3's largest, an expert's or the embedding's, are at most a few hundred MB);
    returns the sha256 of the bytes written."""
    tensor = load_tensor(item.spec.name, item.source)
    data = tensor_bytes(tensor)
    if len(data) != item.spec.nbytes:
        raise ValueError(f"tensor {item.spec.name!r} in {item.source.file} loads as {len(data)} bytes, "
                         f"{item.spec.nbytes} expected")
    done = 0
    while done < len(data):
        done += os.pwrite(out_fd, data[done:], offset + done)
    return hashlib.sha256(data).hexdigest()


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
        fd = open_no_follow(save_path / (FINAL_TMP + part.name), os.O_WRONLY)
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
    the inference engine); returns the sha256 of the whole file.

    Each chunk goes through two digests, the tensor's and the file's. hashlib lets go of the GIL
    on large buffers, so the file's runs on a second thread while this one computes the tensor's:
    on a host with a free core the read-back costs one pass of sha256 instead of two. The next
    chunk is read only once both are done with this one (the chunks share one buffer)."""
    whole = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        header = os.pread(fd, len(part.header), 0)
        if header != part.header:
            raise ValueError(f"{path}: the header was overwritten while the ranks wrote the file")
        whole.update(header)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantjob-verify") as hasher:
            for item, offset in part.tensors:  # in file order, back to back
                digest = hashlib.sha256()
                for chunk in _read_range(fd, offset, item.spec.nbytes,
                                         f"{path} ends inside tensor {item.spec.name!r}"):
                    file_side = hasher.submit(whole.update, chunk)
                    digest.update(chunk)
                    file_side.result()
                if digest.hexdigest() != expected[item.spec.name]:
                    raise ValueError(f"{path}: tensor {item.spec.name!r} does not hold the bytes its rank wrote; "
                                     "the output volume lost concurrent writes from several pods (use a POSIX shared "
                                     "file system: NFS, CephFS, Lustre; not an object-store mount)")
        if os.fstat(fd).st_size > part.size:
            raise ValueError(f"{path} is longer than its header says")
    finally:
        os.close(fd)
    return whole.hexdigest()


def model_files(model_dir: Path) -> list[Path]:
    """msModelSlim's copy_files rule (.json/.py/.txt/.jinja, not *index.json) plus tokenizer
    vocabularies (.model, .tiktoken); the format may still transform or skip each one."""
    return sorted(p for p in model_dir.iterdir()
                  if p.is_file() and p.name.endswith(_COPIED_SUFFIXES) and not p.name.endswith("index.json"))


def commit_output(save_path: Path, staging: Path, plan: OutputPlan, copied: Mapping[str, str], *, num_layers: int,
                  model_dir: Path, run_id: str, fmt: OutputFormat) -> None:
    """Rank 0, once every share is written (``copied``: every tensor's sha256 as its writer copied
    it): the weight files read back and checked, index, copied model files, extra files, renames,
    then the format's entry file and the completion marker (see the module doc)."""
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
        stage_file(index_name(fmt.weights_prefix), json_bytes(index))
    for path in model_files(model_dir):
        if path.name == fmt.entry_file:
            continue
        data = fmt.model_file(path.name, path.read_bytes())
        if data is not None:
            stage_file(path.name, data)
    for name in EXTRA_FILES:  # only these names: anything else found in extra/ is neither copied nor deleted
        path = staging / EXTRA_DIR / name
        if path.is_file() and not path.is_symlink():
            if name in checksums or name == fmt.entry_file:
                raise ValueError(f"extra file {name} would replace a file of the output (the model directory "
                                 f"{model_dir} holds one of that name); fix: rename or remove it there")
            stage_file(name, path.read_bytes())
    for name in pending:
        os.replace(save_path / (FINAL_TMP + name), save_path / name)
    fsync_dir(save_path)  # every file in place before the entry file can name them

    metas = [read_meta(staging, index) for index in range(num_layers)]
    scratch = staging / SCRATCH_DIR
    real_directory(scratch)
    contents = OutputContents(
        tensors=tuple((item.spec.name, item.tag, item.spec.shape) for item in plan.tensors),
        from_layers=frozenset(item.spec.name for item in plan.tensors if item.sha256 is not None),
        linears=tuple(lin for meta in metas for lin in meta["linears"]),
        float_names=tuple(name for meta in metas for name in meta["float_tensors"]),
        model_dir=model_dir, scratch=scratch)
    data = fmt.entry_bytes(contents)
    atomic_write_bytes(save_path / fmt.entry_file, data)
    checksums[fmt.entry_file] = hashlib.sha256(data).hexdigest()
    marker = {"run_id": run_id, "files": dict(sorted(checksums.items()))}
    atomic_write_bytes(save_path / COMPLETE, json_bytes(marker))
    fsync_dir(save_path)
    shutil.rmtree(staging)


def remove_temporaries(save_path: Path) -> None:
    for path in save_path.glob(FINAL_TMP + "*"):
        path.unlink()


def owned_names(save_path: Path, fmt: OutputFormat, also: Iterable[str] = ()) -> list[str]:
    """The names directly inside ``save_path`` that a saver of ``fmt`` writes, among those present:
    the marker, the entry file, the weight files and index, and ``also`` (the files this run copies
    from the model directory and the extra files it writes). Nothing is read from the marker."""
    weights = weight_file_pattern(fmt.weights_prefix)
    fixed = {COMPLETE, fmt.entry_file, index_name(fmt.weights_prefix), *also}
    found: list[str] = []
    with os.scandir(save_path) as entries:
        for entry in entries:
            if entry.name in fixed or weights.fullmatch(entry.name):
                found.append(entry.name)
    return sorted(found)


def remove_output(save_path: Path, fmt: OutputFormat, also: Iterable[str] = ()) -> None:
    """Delete a previous output (for --overwrite): the plain files ``owned_names`` finds (a link is
    removed, never followed; a directory of that name is left alone) and leftover temporaries. Other
    files in the directory are left alone, and so is staging (``prepare_output`` decides about it
    by its run id)."""
    for name in owned_names(save_path, fmt, also):
        path = save_path / name
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            path.unlink()
    remove_temporaries(save_path)


def marker_run_id(save_path: Path) -> str | None:
    """The run id in the completion marker (None: no marker, or one that cannot be read)."""
    try:
        marker = json.loads((save_path / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    run_id = marker.get("run_id") if isinstance(marker, dict) else None
    return run_id if isinstance(run_id, str) else None


def missing_files(save_path: Path) -> list[str]:
    """Files the marker lists that are not plain files directly inside ``save_path`` (a name with a
    path in it counts as missing: it is never looked up outside the directory)."""
    try:
        files = json.loads((save_path / COMPLETE).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return [COMPLETE]
    if not isinstance(files, dict):
        return [COMPLETE]
    return sorted(str(name) for name in files
                  if not isinstance(name, str) or Path(name).name != name or name in (".", "..")
                  or not (save_path / name).is_file())


def verify_complete(save_path: Path) -> str | None:
    """None when the marker's checksums all match the files; otherwise the first problem."""
    try:
        marker = json.loads((save_path / COMPLETE).read_text(encoding="utf-8"))
        for name, digest in marker["files"].items():
            if Path(name).name != name or name in (".", ".."):
                return f"{save_path / COMPLETE}: {name!r} is not a file name in the output directory"
            if _sha256_file(save_path / name) != digest:
                return f"{save_path / name} does not match its checksum"
    except (OSError, ValueError, KeyError) as err:
        return f"{save_path / COMPLETE}: {err}"
    return None
