"""A model directory's ``config.json`` as plain data (no torch: the CLI reads it before launching)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantjob.worker.errors import QuantJobError


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of a model directory as plain data (QuantJobError naming the file otherwise)."""
    if not model_dir.is_dir():
        raise QuantJobError(f"model directory {model_dir} does not exist or is not a directory; fix --model_path")
    path = model_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise QuantJobError(f"{path} is missing; --model_path must be a Hugging Face model directory") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QuantJobError(f"{path} is unreadable or not JSON ({error}); re-copy the model") from error
    if not isinstance(data, dict):
        raise QuantJobError(f"{path} must hold a JSON object; re-copy the model")
    return data
