"""``quant_provenance.json``: what made an output, so that two outputs can be told apart.

It records the resolved config and its hash, the run id (``runner.run_id_for``: the hash of
everything that decides the output bytes), fingerprints of the model (config.json and each weight
file) and of the calibration token ids, the run's options, the world size and runner, every
rank's device kind and intra-op threads, and the versions of quantjob, torch, transformers,
safetensors and compressed-tensors. No path, host name or time is recorded: a resumed run writes
the same file as an uninterrupted one. It is the one output file that depends on how the work
was spread (world size, runner, threads per rank); every other file is the same bytes for 1 or N
ranks with the same device kind and threads per rank.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Any

import torch

from quantjob.worker.group.distributed import ProcessGroup
from quantjob.worker.model.checkpoint import Checkpoint, file_fingerprint

PROVENANCE_FILE = "quant_provenance.json"
FORMAT_VERSION = 1
_PACKAGES = ("quantjob", "torch", "transformers", "safetensors", "compressed-tensors")


def _sha256_json(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def package_versions() -> dict[str, str | None]:
    """Installed versions (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    if found["quantjob"] is None:
        import quantjob

        found["quantjob"] = quantjob.__version__
    return found


def rank_layout(group: ProcessGroup, device: torch.device) -> list[dict[str, Any]]:
    """Collective: every rank's device kind and intra-op thread count, in rank order."""
    mine = {"device": device.type, "threads": torch.get_num_threads()}
    return [{"rank": rank, **entry} for rank, entry in enumerate(group.all_gather_object(mine))]


def provenance_record(*, config: dict[str, Any], run_id: str, model_config: dict[str, Any], checkpoint: Checkpoint,
                      calibration_digest: str, samples: int, options: dict[str, Any], world_size: int, runner: str,
                      ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """The provenance JSON (plain data; ``ranks`` from ``rank_layout``)."""
    kinds = sorted({entry["device"] for entry in ranks})
    threads = sorted({entry["threads"] for entry in ranks})
    return {
        "format_version": FORMAT_VERSION,
        "run_id": run_id,
        "config_sha256": _sha256_json(config),
        "config": config,
        "model": {"config_sha256": _sha256_json(model_config),
                  "weights": [{"file": file.name, "fingerprint": file_fingerprint(file)} for file in checkpoint.files]},
        "calibration": {"token_ids_sha256": calibration_digest, "samples": samples},
        "options": options,
        "world_size": world_size,
        "runner": runner,
        "device_kind": kinds[0] if len(kinds) == 1 else kinds,
        "threads_per_rank": threads[0] if len(threads) == 1 else [entry["threads"] for entry in ranks],
        "ranks": ranks,
        "versions": package_versions(),
    }
