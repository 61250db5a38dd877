"""Assemble the final ascendv1 output from the staging area (rank 0, once, after a barrier).

Order of work, so that an interrupted run never looks complete: weight files, index, copied
model files and extra JSON files are written under ``.quantjob-tmp-`` names and then renamed;
``quant_model_description.json`` (what vllm-ascend looks for) is written after all of them;
``.quantjob-complete`` (run_id + sha256 of every file) is written last; then staging is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from quantjob.worker.checkpoint import TensorInfo, load_tensor, read_header
from quantjob.worker.safetensors_stream import (
    StreamWriter,
    TensorSpec,
    library_order,
    tensor_sha256,
)
from quantjob.worker.savers.ascend_tensors import model_quant_type
from quantjob.worker.savers.staging import (
    EXTRA_DIR,
    atomic_write_bytes,
    json_bytes,
    read_meta,
    stem,
)

WEIGHTS_PREFIX = "quant_model_weights"        # msModelSlim's ASCENDV1_SAFETENSORS_NAME, less ".safetensors"
DESCRIPTION = "quant_model_description.json"  # what vllm-ascend's AscendModelSlimConfig reads
COMPLETE = ".quantjob-complete"
FINAL_TMP = ".quantjob-tmp-"
DESCRIPTION_VERSION = "1.0.0"
ONE_GB = 1 << 30                              # msModelSlim's ONE_GB_FILE_BYTES
_COPIED_SUFFIXES = (".json", ".py", ".txt", ".jinja", ".model", ".tiktoken")


@dataclass(frozen=True)
class PlannedTensor:
    spec: TensorSpec
    desc: str
    source: str        # staging stem holding its bytes
    sha256: str


def plan_tensors(staging: Path, num_layers: int) -> list[PlannedTensor]:
    """Every output tensor in file order: layers by index (names sorted), then the outer ones."""
    planned: list[PlannedTensor] = []
    indices: list[int | None] = [*range(num_layers)]
    if (staging / f"{stem(None)}.json").is_file():
        indices.append(None)
    for index in indices:
        meta = read_meta(staging, index)
        outputs = sorted(meta["output"]) if index is not None else meta["output"]
        with safe_open(str(staging / f"{stem(index)}.safetensors"), framework="pt") as handle:
            for name, desc in outputs:
                piece = handle.get_slice(name)
                spec = TensorSpec(name, piece.get_dtype(), tuple(piece.get_shape()))
                planned.append(PlannedTensor(spec, desc, stem(index), meta["sha256"][name]))
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


def _write_part(path: Path, items: list[PlannedTensor], staging: Path) -> str:
    """Stream one weight file, one tensor in memory at a time, each checked against its record."""
    ordered = library_order(item.spec for item in items)
    by_name = {item.spec.name: item for item in items}
    headers: dict[str, dict[str, TensorInfo]] = {}
    with StreamWriter(path, ordered) as writer:
        for spec in ordered:
            item = by_name[spec.name]
            if item.source not in headers:
                headers[item.source] = read_header(staging / f"{item.source}.safetensors")
            # positioned reads: staged files are never mapped into memory
            tensor = load_tensor(spec.name, headers[item.source][spec.name])
            if tensor_sha256(tensor) != item.sha256:
                raise ValueError(f"staged tensor {spec.name!r} in {staging / item.source}.safetensors "
                                 "no longer matches its checksum; delete that file to redo the layer")
            writer.write(spec.name, tensor)
            del tensor
    return writer.close()


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


def assemble(save_path: Path, staging: Path, *, num_layers: int, part_file_size: float | None,
             model_dir: Path, run_id: str) -> None:
    """Write the final output directory from a complete staging area (see the module doc)."""
    remove_temporaries(save_path)
    planned = plan_tensors(staging, num_layers)
    parts = split_parts(planned, part_file_size)
    names = part_names(len(parts), part_file_size is not None)
    checksums: dict[str, str] = {}
    pending: list[str] = []

    def stage_file(name: str, data: bytes) -> None:
        (save_path / (FINAL_TMP + name)).write_bytes(data)
        checksums[name] = hashlib.sha256(data).hexdigest()
        pending.append(name)

    for name, items in zip(names, parts):
        checksums[name] = _write_part(save_path / (FINAL_TMP + name), items, staging)
        pending.append(name)
    if part_file_size is not None:
        weight_map = {item.spec.name: name for name, items in zip(names, parts) for item in items}
        index = {"metadata": {"total_size": sum(item.spec.nbytes for item in planned)}, "weight_map": weight_map}
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

    description: dict[str, object] = {item.spec.name: item.desc for item in planned}
    description.update({
        "version": DESCRIPTION_VERSION,
        "model_quant_type": model_quant_type({item.desc for item in planned}),
        "metadata": {},
        "group_size": group_size_of(staging, num_layers),
        "optional": {},
    })
    data = json_bytes(description)
    atomic_write_bytes(save_path / DESCRIPTION, data)
    checksums[DESCRIPTION] = hashlib.sha256(data).hexdigest()
    marker = {"run_id": run_id, "files": dict(sorted(checksums.items()))}
    atomic_write_bytes(save_path / COMPLETE, json_bytes(marker))
    shutil.rmtree(staging)


def remove_temporaries(save_path: Path) -> None:
    for path in save_path.glob(FINAL_TMP + "*"):
        path.unlink()


def remove_output(save_path: Path) -> None:
    """Delete a previous output (for --overwrite): the files its marker lists, the description,
    weight files, the marker and staging. Other files in the directory are left alone."""
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
