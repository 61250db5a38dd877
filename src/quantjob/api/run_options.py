"""The options of one quantization run that the CLI, the worker and the operator's pod command share."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NextLayerInput = Literal["float", "quantized"]


class RunOptions(BaseModel):
    """Where to read and write, which calibration, and how the loop runs (not which algorithm)."""

    model_config = ConfigDict(extra="forbid")

    model_path: Path
    save_path: Path
    calib_file: Path | None = None
    calib_samples: int = Field(128, ge=1)
    max_length: int = Field(2048, ge=1)
    model_type: str | None = None
    trust_remote_code: bool = False
    overwrite: bool = False
    next_layer_input: NextLayerInput = "float"
    error_samples: int = Field(8, ge=0)
    # MoE: also run every calibration token through every routed expert, for statistics only
    # (quantjob.worker.experts): static activation scales for experts no token is routed to
    calibrate_all_experts: bool = False
