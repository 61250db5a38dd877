"""A test reader that loads an ascendv1 output the way vllm-ascend would, without an NPU.

It mirrors, for dense decoder models (Llama, Qwen2, Qwen3, Mistral), what vllm-ascend's ModelSlim
loader decides and which parameters it creates (vllm-project/vllm-ascend at commit
182b75ea84ff13ece27b57391331ef8935410aea):

- ``quantization/modelslim_config.py`` 431-470 ``get_linear_quant_type``: a fused module's type is
  its shards' type; shards of different types -> ValueError;
- ``modelslim_config.py`` 776-808 ``is_layer_skipped_ascend``: some shards FLOAT and some not ->
  ValueError; all FLOAT -> an unquantized linear (``weight`` in the model dtype);
- ``modelslim_config.py`` 523-541 ``create_scheme_for_layer``: the scheme registry
  (``methods/registry.py``) has no ("W4A16", "linear") entry (``methods/w4a16.py`` 110 registers
  "moe" only) -> NotImplementedError;
- ``method_adapters.py`` 47-95 ``AscendLinearMethod.create_weights``: ``get_weight`` /
  ``get_pertensor_param`` / ``get_perchannel_param`` of the scheme, per-channel parameters sized by
  the fused module's total output (each shard loads its rows), per-tensor ones of shape [1] shared by
  the shards (each shard's value is copied over the last: they must be equal);
- the parameters per scheme: ``methods/w8a8_static.py`` 58-86 (W8A8: weight int8 [out, in];
  input_scale params_dtype [1]; input_offset int8 [1]; quant_bias int32 [out]; deq_scale float32
  for bfloat16, int64 for float16, absent otherwise; weight_scale, weight_offset params_dtype
  [out, 1]), ``methods/w8a8_dynamic.py`` 71-83 (W8A8_DYNAMIC: weight, weight_scale, weight_offset),
  ``methods/w8a16.py`` 39-56 (W8A16: weight, weight_scale, weight_offset [out, 1]);
- ``ops/layernorm.py`` 42-47: when the description names any ``norm.bias``, every RMSNorm gets a
  ``bias`` parameter [hidden] (asymmetric smoothing);
- a checkpoint tensor with no parameter is refused by the model's ``load_weights`` (KeyError); a
  parameter the checkpoint does not fill would run on uninitialised memory: both are errors here.

The model is served in its checkpoint dtype (``params_dtype`` = config.json's dtype).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
MODULES = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
LINEAR_SCHEMES = ("W8A8", "W8A8_DYNAMIC", "W8A16")   # registered for "linear"


class NotLoadable(Exception):
    """What vllm-ascend's loader would raise, with its reason."""


@dataclass(frozen=True)
class Param:
    dtype: torch.dtype
    shape: tuple[int, ...]


def _scheme_params(quant_type: str, out: int, inp: int, params_dtype: torch.dtype) -> dict[str, Param]:
    """``get_weight`` + ``get_pertensor_param`` + ``get_perchannel_param`` of one registered scheme."""
    params = {"weight": Param(torch.int8, (out, inp))}
    if quant_type == "W8A8":
        params |= {"input_scale": Param(params_dtype, (1,)), "input_offset": Param(torch.int8, (1,)),
                   "quant_bias": Param(torch.int32, (out,))}
        if params_dtype == torch.bfloat16:
            params["deq_scale"] = Param(torch.float32, (out,))
        elif params_dtype == torch.float16:
            params["deq_scale"] = Param(torch.int64, (out,))
    params |= {"weight_scale": Param(params_dtype, (out, 1)), "weight_offset": Param(params_dtype, (out, 1))}
    return params


def _sizes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    return {"self_attn.q_proj": (heads * head_dim, hidden), "self_attn.k_proj": (kv * head_dim, hidden),
            "self_attn.v_proj": (kv * head_dim, hidden), "self_attn.o_proj": (hidden, heads * head_dim),
            "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}


def _biases(config: dict[str, Any]) -> set[str]:
    if config.get("model_type") == "qwen2":
        return {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
    if config.get("attention_bias"):
        return {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
    return set()


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  # safe_open is not iterable
                if key in tensors:
                    raise NotLoadable(f"{key} in two weight files")
                tensors[key] = handle.get_tensor(key)
    return tensors


def read(path: Path) -> dict[str, str]:
    """Load ``path`` as vllm-ascend would; returns each linear module's scheme ("FLOAT" when
    unquantized); NotLoadable (or the loader's own exception type) otherwise."""
    description: dict[str, Any] = json.loads((path / "quant_model_description.json").read_text())
    config = json.loads((path / "config.json").read_text())
    params_dtype = DTYPES[str(config.get("dtype") or config.get("torch_dtype"))]
    weights = load_weights(path)
    sizes, biases = _sizes(config), _biases(config)
    hidden = config["hidden_size"]
    expected: dict[str, Param] = {}
    schemes: dict[str, str] = {}
    for layer in range(config["num_hidden_layers"]):
        base = f"model.layers.{layer}."
        for module in MODULES:
            shards = FUSED.get(module, (module,))
            kinds = [description.get(f"{base}{shard}.weight") for shard in shards]
            if None in kinds:
                raise NotLoadable(f"{base}{module}: a shard has no description entry (KeyError in the loader)")
            skipped = {kind == "FLOAT" for kind in kinds}
            if len(skipped) > 1:   # is_layer_skipped_ascend
                raise ValueError(f"Detected some but not all shards of {base}{module} are quantized")
            if len(set(kinds)) > 1:  # get_linear_quant_type
                raise ValueError(f"Not all shards of {base}{module} are quantized with same quant type: {kinds}")
            kind = kinds[0]
            if kind != "FLOAT" and kind not in LINEAR_SCHEMES:
                raise NotImplementedError(f"vLLM Ascend doesn't support quant_type={kind} for layer_type=linear "
                                          f"({base}{module})")
            schemes[base + module] = kind
            for shard in shards:
                out, inp = sizes[shard]
                params = {"weight": Param(params_dtype, (out, inp))} if kind == "FLOAT" else \
                    _scheme_params(kind, out, inp, params_dtype)
                if shard in biases:
                    params["bias"] = Param(params_dtype, (out,))
                expected |= {f"{base}{shard}.{name}": param for name, param in params.items()}
            if kind == "W8A8" and len(shards) > 1:  # one [1] parameter for every shard: the values must agree
                for name in ("input_scale", "input_offset"):
                    values = [weights.get(f"{base}{shard}.{name}") for shard in shards]
                    if any(v is None for v in values) or any(not torch.equal(values[0], v) for v in values[1:]):
                        raise NotLoadable(f"{base}{module}.{name} differs between its shards; the loader keeps "
                                          "the last one")
        norms = ["input_layernorm", "post_attention_layernorm"]
        if config.get("model_type") == "qwen3":
            norms += ["self_attn.q_norm", "self_attn.k_norm"]
        head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
        for norm in norms:
            size = head_dim if norm.endswith(("q_norm", "k_norm")) else hidden
            expected[f"{base}{norm}.weight"] = Param(params_dtype, (size,))
            if any("norm.bias" in key for key in description) and f"{base}{norm}.bias" in weights:
                expected[f"{base}{norm}.bias"] = Param(weights[f"{base}{norm}.bias"].dtype, (size,))
    vocab = config["vocab_size"]
    expected["model.embed_tokens.weight"] = Param(params_dtype, (vocab, hidden))
    expected["model.norm.weight"] = Param(params_dtype, (hidden,))
    if not config.get("tie_word_embeddings"):
        expected["lm_head.weight"] = Param(params_dtype, (vocab, hidden))
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise NotLoadable(f"checkpoint tensors with no parameter (KeyError in load_weights): {unexpected[:5]}")
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise NotLoadable(f"parameters the checkpoint does not fill: {missing[:5]}")
    for name, param in expected.items():
        got = weights[name]
        if (got.dtype, tuple(got.shape)) != (param.dtype, param.shape):
            raise NotLoadable(f"{name}: checkpoint {got.dtype} {tuple(got.shape)}, parameter {param.dtype} "
                              f"{param.shape}")
    described = {key for key, value in description.items() if isinstance(value, str)} - {"model_quant_type",
                                                                                        "version"}
    if described != set(weights):
        raise NotLoadable(f"description and weights name different tensors: {sorted(described ^ set(weights))[:5]}")
    return schemes


# --- Mixture-of-Experts layers ----------------------------------------------------------------------------------
# vllm-ascend (same commit): ``modelslim_config.py`` ``packed_modules_model_mapping[model_type]["experts"]`` =
# experts.0.{gate,up,down}_proj: the MoE layer's type is their common tag (``get_linear_quant_type``, ValueError
# when they differ; ``is_layer_skipped_ascend``: all FLOAT -> unquantized MoE); ``create_scheme_for_layer`` looks
# up (type, "moe") in the registry, where the only int8 entry is W8A8_DYNAMIC (``methods/w8a8_dynamic.py``
# ``AscendW8A8DynamicFusedMoEMethod``: ``get_weight`` w13_weight int8 [E, 2I, H], w2_weight int8 [E, H, I];
# ``get_dynamic_quant_param`` w13_weight_scale / w13_weight_offset params_dtype [E, 2I, 1], w2_weight_scale /
# w2_weight_offset [E, H, 1]). vLLM's expert mapping loads ``experts.{e}.gate_proj.<suffix>`` into rows [0, I) of
# ``w13_<suffix>`` of expert e, ``up_proj`` into rows [I, 2I), ``down_proj`` into ``w2_<suffix>``. The router
# ``mlp.gate`` is an unquantized linear [E, H] (its float weight is copied in with a cast, so the checkpoint's float
# dtype loads: DeepSeek's router is float32 in transformers); DeepSeek's ``e_score_correction_bias`` is a float
# parameter [E] of it.
MOE_SCHEMES = ("W8A8_DYNAMIC",)   # registered for "moe" among the int8 types quantjob writes
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def read_moe_layer(path: Path, layer: int) -> str:
    """Load decoder layer ``layer``'s routed experts and router of the ascendv1 output at ``path`` as
    vllm-ascend would; returns the MoE layer's scheme (``FLOAT`` when unquantized)."""
    description: dict[str, Any] = json.loads((path / "quant_model_description.json").read_text())
    config = json.loads((path / "config.json").read_text())
    params_dtype = DTYPES[str(config.get("dtype") or config.get("torch_dtype"))]
    weights = load_weights(path)
    hidden, inter = config["hidden_size"], config["moe_intermediate_size"]
    count = config.get("n_routed_experts") or config.get("num_experts") or config["num_local_experts"]
    base = f"model.layers.{layer}.mlp."
    kinds = [description.get(f"{base}experts.0.{p}.weight") for p in PROJECTIONS]
    if None in kinds:
        raise NotLoadable(f"{base}experts: an experts.0 projection has no description entry (KeyError)")
    if len({kind == "FLOAT" for kind in kinds}) > 1:
        raise ValueError(f"Detected some but not all shards of {base}experts are quantized")
    if len(set(kinds)) > 1:
        raise ValueError(f"Not all shards of {base}experts are quantized with same quant type: {kinds}")
    kind = kinds[0]
    if kind != "FLOAT" and kind not in MOE_SCHEMES:
        raise NotImplementedError(f"vLLM Ascend doesn't support quant_type={kind} for layer_type=moe ({base}experts)")
    shapes = {"gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    expected: dict[str, Param] = {}
    for expert in range(count):
        for projection, (out, inp) in shapes.items():
            name = f"{base}experts.{expert}.{projection}"
            if kind == "FLOAT":
                expected[f"{name}.weight"] = Param(params_dtype, (out, inp))
            else:
                expected |= {f"{name}.weight": Param(torch.int8, (out, inp)),
                             f"{name}.weight_scale": Param(params_dtype, (out, 1)),
                             f"{name}.weight_offset": Param(params_dtype, (out, 1))}
    if description.get(f"{base}gate.weight") != "FLOAT":
        raise NotLoadable(f"{base}gate (the router) is described {description.get(f'{base}gate.weight')}: vLLM builds "
                          "it unquantized (a weight_scale would have no parameter)")
    router = weights.get(f"{base}gate.weight")   # copied into its parameter with a cast: any float dtype loads
    if router is None or not router.is_floating_point() or tuple(router.shape) != (count, hidden):
        raise NotLoadable(f"{base}gate.weight must be a float [{count}, {hidden}] tensor")
    for name, param in expected.items():
        got = weights.get(name)
        if got is None:
            raise NotLoadable(f"{name}: the parameter is not filled by the checkpoint (uninitialised memory)")
        if (got.dtype, tuple(got.shape)) != (param.dtype, param.shape):
            raise NotLoadable(f"{name}: checkpoint {got.dtype} {tuple(got.shape)}, parameter {param.dtype} {param.shape}")
        if description.get(name) != (kind if name.startswith(f"{base}experts.") else "FLOAT"):
            raise NotLoadable(f"{name} is described {description.get(name)}, the layer loads as {kind}")
    bias = weights.get(f"{base}gate.e_score_correction_bias")
    if bias is not None and (not bias.is_floating_point() or tuple(bias.shape) != (count,)
                             or description.get(f"{base}gate.e_score_correction_bias") != "FLOAT"):
        raise NotLoadable(f"{base}gate.e_score_correction_bias must be a FLOAT [{count}] tensor")
    stray = sorted(name for name in weights if name.startswith(f"{base}experts.") and name not in expected)
    stray += sorted(name for name in weights if name.startswith(f"{base}gate.")
                    and name not in (f"{base}gate.weight", f"{base}gate.e_score_correction_bias"))
    if stray:
        raise NotLoadable(f"checkpoint tensors with no parameter (KeyError in load_weights): {stray[:5]}")
    return str(kind)
