"""The ascendv1 format (msModelSlim's v1 saver, read by vllm-ascend): tensors per quantized linear
from ``ascend_tensors``, every other tensor FLOAT, and ``quant_model_description.json`` naming each
tensor's type. Facts and sources: ``docs/ascend-format-notes.md``. The format's entry: ``__init__.py``.
"""

from __future__ import annotations

import json
from typing import Any

from quantjob.worker.loop.records import LayerOutput
from quantjob.worker.savers.ascend_tensors import ascend_tensors, model_quant_type
from quantjob.worker.savers.formats import FLOAT, NamedTensor, OutputContents
from quantjob.worker.savers.staging import json_bytes

WEIGHTS_PREFIX = "quant_model_weights"        # msModelSlim's ASCENDV1_SAFETENSORS_NAME, less ".safetensors"
from quantjob.formats.ascendv1 import DESCRIPTION, NAME

DESCRIPTION_VERSION = "1.0.0"


def config_bytes(raw: bytes) -> bytes:
    """config.json as is, unless it carries a ``quantization_config`` (dropped, as msModelSlim does:
    vllm-ascend reads the quantization from the description file)."""
    config = json.loads(raw)
    removed = config.pop("quantization_config", None) is not None
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        removed = text_config.pop("quantization_config", None) is not None or removed
    return json_bytes(config) if removed else raw


def group_size_of(linears: tuple[dict[str, Any], ...]) -> int:
    """The description's one ``group_size`` (0 unless per-group)."""
    sizes = {lin["group_size"] for lin in linears if lin["group_size"]}
    if len(sizes) > 1:
        raise ValueError(f"linears use different group sizes {sorted(sizes)}; the description holds one")
    return sizes.pop() if sizes else 0


class AscendV1Format:
    name = NAME
    weights_prefix = WEIGHTS_PREFIX
    entry_file = DESCRIPTION
    entry_what = "a quantized model description"

    def layer_tensors(self, out: LayerOutput) -> list[NamedTensor]:
        tensors = [NamedTensor(item.name, item.desc, item.tensor) for q in out.quantized for item in ascend_tensors(q)]
        tensors += [NamedTensor(name, FLOAT, tensor) for name, tensor in out.float_tensors.items()]
        return tensors

    def model_file(self, name: str, data: bytes) -> bytes | None:
        if name == DESCRIPTION:       # never a previous quantized description
            return None
        return config_bytes(data) if name == "config.json" else data

    def entry_bytes(self, contents: OutputContents) -> bytes:
        description: dict[str, object] = {name: tag for name, tag, _ in contents.tensors}
        description.update({
            "version": DESCRIPTION_VERSION,
            "model_quant_type": model_quant_type({tag for _, tag, _ in contents.tensors}),
            "metadata": {},
            "group_size": group_size_of(contents.linears),
            "optional": {},
        })
        return json_bytes(description)


FORMAT = AscendV1Format()
