"""config.json, parsed into typed data with one-line errors naming the field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from k2trt.errors import K2Error, show
from k2trt.fsutil import read_json

_REQUIRED = object()
MAX_CONFIG_BYTES = 4 << 20  # config.json is a few KB; generation_config.json less

# The largest value accepted per integer field (MAX_DIM for the rest): our own bounds, far above
# any published model of the family (Kimi K2: 61 layers, 384 experts, hidden 7168, vocab
# 163,840). They keep a hostile config from costing hours (work per layer and per expert) or
# overflowing a float; at these limits `plan`, which still walks every tensor, takes ~6 s.
MAX_DIM = 1 << 20
LIMITS: dict[str, int] = {
    "num_hidden_layers": 256,
    "num_nextn_predict_layers": 16,
    "first_k_dense_replace": 256,
    "moe_layer_freq": 256,
    "n_routed_experts": 1024,
    "n_shared_experts": 64,
    "num_experts_per_tok": 1024,
    "n_group": 1024,
    "topk_group": 1024,
    "num_attention_heads": 4096,
    "num_key_value_heads": 4096,
    "vocab_size": 1 << 24,
    "max_position_embeddings": 1 << 24,
    "bos_token_id": (1 << 31) - 1,
    "eos_token_id": (1 << 31) - 1,
    "rope_theta": 10**12,
}
MAX_ROPE_THETA = 1e12  # published values run 1e4..1e7

# Sizes where 0 is as wrong as missing (q_lora_rank may be null; experts may not be 0 in MoE).
POSITIVE = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "moe_intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "n_routed_experts",
        "num_experts_per_tok",
        "moe_layer_freq",
        "n_group",
        "topk_group",
        "max_position_embeddings",
        "q_lora_rank",
        "num_key_value_heads",
    }
)

# The fields our specs read, their types and defaults (_REQUIRED: must be present).
# Defaults follow DeepSeek-V3's configuration class for fields that older configs omit.
FIELDS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "model_type": (str, _REQUIRED),
    "vocab_size": (int, _REQUIRED),
    "hidden_size": (int, _REQUIRED),
    "intermediate_size": (int, _REQUIRED),
    "moe_intermediate_size": (int, _REQUIRED),
    "num_hidden_layers": (int, _REQUIRED),
    "num_attention_heads": (int, _REQUIRED),
    "q_lora_rank": ((int, type(None)), _REQUIRED),
    "kv_lora_rank": (int, _REQUIRED),
    "qk_nope_head_dim": (int, _REQUIRED),
    "qk_rope_head_dim": (int, _REQUIRED),
    "v_head_dim": (int, _REQUIRED),
    "n_routed_experts": (int, _REQUIRED),
    "n_shared_experts": (int, _REQUIRED),
    "num_experts_per_tok": (int, _REQUIRED),
    "first_k_dense_replace": (int, _REQUIRED),
    "moe_layer_freq": (int, 1),
    "num_nextn_predict_layers": (int, 0),
    "num_key_value_heads": ((int, type(None)), None),
    "n_group": (int, 1),
    "topk_group": (int, 1),
    "topk_method": (str, "noaux_tc"),
    "tie_word_embeddings": (bool, False),
    "max_position_embeddings": (int, 4096),
    "rope_theta": ((int, float), 10000.0),
    "rope_scaling": ((dict, type(None)), None),
    "quantization_config": ((dict, type(None)), None),
    "architectures": ((list, type(None)), None),
    "bos_token_id": ((int, type(None)), None),
    "eos_token_id": ((int, list, type(None)), None),
}


@dataclass(frozen=True)
class ModelConfig:
    """The architecture-relevant part of a DeepSeek-V3-family config.json.

    >>> cfg = ModelConfig.from_dict(json.load(open("config.json")))  # doctest: +SKIP
    >>> cfg.hidden_size                                             # doctest: +SKIP
    7168
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    first_k_dense_replace: int
    moe_layer_freq: int
    num_nextn_predict_layers: int
    num_key_value_heads: int | None
    n_group: int
    topk_group: int
    topk_method: str
    tie_word_embeddings: bool
    max_position_embeddings: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    quantization_config: dict[str, Any] | None
    architectures: list[str] | None
    bos_token_id: int | None
    eos_token_id: int | list[int] | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    path: str = field(default="config.json", compare=False)

    @classmethod
    def from_dict(cls, data: Any, path: str = "config.json") -> ModelConfig:
        if not isinstance(data, dict):
            raise K2Error("config must be a JSON object", path=path)
        if isinstance(data.get("text_config"), dict):  # multimodal wrappers (Kimi K2.5 style)
            data = data["text_config"]
        _check_supported(data, path)
        values: dict[str, Any] = {}
        for name, (kind, default) in FIELDS.items():
            values[name] = _field(data, name, kind, default, path)
        return cls(**values, raw=dict(data), path=path)

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        """Read and validate `config.json` (a file or the directory holding it)."""
        root = None
        if path.is_dir():
            root, path = path, path / "config.json"
        data = read_json(path, "config.json", root=root, limit=MAX_CONFIG_BYTES)
        return cls.from_dict(data, str(path))

    # Derived sizes, named as the tables in deepseek_v3.py use them.
    @property
    def dims(self) -> dict[str, int]:
        heads = self.num_attention_heads
        return {
            "hidden": self.hidden_size,
            "vocab": self.vocab_size,
            "dense_ff": self.intermediate_size,
            "expert_ff": self.moe_intermediate_size,
            "shared_ff": self.moe_intermediate_size * self.n_shared_experts,
            "experts": self.n_routed_experts,
            "q_lora": self.q_lora_rank or 0,
            "kv_lora": self.kv_lora_rank,
            "q_out": heads * (self.qk_nope_head_dim + self.qk_rope_head_dim),
            "kv_a_out": self.kv_lora_rank + self.qk_rope_head_dim,
            "kv_b_out": heads * (self.qk_nope_head_dim + self.v_head_dim),
            "o_in": heads * self.v_head_dim,
            "rope_half": self.qk_rope_head_dim // 2,
            "hidden2": 2 * self.hidden_size,
        }

    @property
    def rope_factor(self) -> float | None:
        return finite_number((self.rope_scaling or {}).get("factor"))

    @property
    def fp8_block(self) -> tuple[int, int] | None:
        """The weight block size when the checkpoint is block-FP8, else None."""
        q = self.quantization_config or {}
        if q.get("quant_method") != "fp8":
            return None
        block = q.get("weight_block_size")
        if not (
            isinstance(block, list)
            and len(block) == 2
            and all(
                isinstance(b, int) and not isinstance(b, bool) and 0 < b <= MAX_DIM for b in block
            )
        ):
            raise K2Error(
                f"field 'quantization_config.weight_block_size' must be two integers in "
                f"1..{MAX_DIM}, got {show(block)}",
                path=self.path,
            )
        return block[0], block[1]

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace and layer % self.moe_layer_freq == 0

    def moe_layers_between(self, start: int, stop: int) -> int:
        """How many of layers start..stop-1 are MoE, in closed form (no loop over layers).

        >>> cfg.moe_layers_between(0, 61)  # Kimi K2: layer 0 dense  # doctest: +SKIP
        60
        """
        low, freq = max(start, self.first_k_dense_replace), self.moe_layer_freq
        return 0 if low >= stop else (stop - 1) // freq - (low - 1) // freq

    def first_layer(self, start: int, stop: int, moe: bool) -> int | None:
        """The first MoE (or dense) layer in start..stop-1, or None, in closed form."""
        low, freq = max(start, self.first_k_dense_replace), self.moe_layer_freq
        if moe:
            layer = low + (-low % freq)
        elif start < self.first_k_dense_replace or start % freq:
            layer = start
        else:
            layer = start + 1 if freq > 1 else stop
        return layer if layer < stop else None


def finite_number(value: Any) -> float | None:
    """`value` as a finite float, or None (not a number, NaN, infinite, or too big for a float).

    >>> finite_number(32), finite_number(10**400), finite_number(float("nan")), finite_number(True)
    (32.0, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _check_supported(data: dict[str, Any], path: str) -> None:
    """An unsupported architecture is named first, before fields it would not have anyway."""
    from k2trt.models.spec import is_supported, supported_names

    model_type = _field(data, "model_type", str, _REQUIRED, path)
    architectures = _field(data, "architectures", (list, type(None)), None, path) or []
    if not is_supported(model_type, architectures):
        listed = f"architectures {show(architectures)}; " if architectures else ""
        raise K2Error(
            f"field 'model_type': {show(model_type)} is not a supported architecture "
            f"({listed}supported: {', '.join(supported_names())})",
            path=path,
        )


def _field(data: dict[str, Any], name: str, kind: Any, default: Any, path: str) -> Any:
    if name not in data:
        if default is _REQUIRED:
            raise K2Error(f"field {name!r} is missing", path=path)
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a true/false where a size belongs is a mistake.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise K2Error(f"field {name!r} must be {wanted}, got {show(value)}", path=path)
    if isinstance(value, int) and not isinstance(value, bool):
        _check_int(name, value, path)
    is_real = isinstance(value, float) or name == "rope_theta"
    if is_real and (finite_number(value) is None or not 0 < value <= MAX_ROPE_THETA):
        raise K2Error(
            f"field {name!r} must be a positive finite number up to {MAX_ROPE_THETA:g}, "
            f"got {show(value)}",
            path=path,
        )
    if isinstance(value, list) and name.endswith("_token_id"):
        for item in value:
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                raise K2Error(f"field {name!r} must hold token ids, got {show(item)}", path=path)
            _check_int(name, item, path)
    names = value if isinstance(value, list) and name == "architectures" else []
    if not all(isinstance(item, str) for item in names):
        raise K2Error(f"field {name!r} must list names, got {show(value)}", path=path)
    return value


def _check_int(name: str, value: int, path: str) -> None:
    if value < 0:
        raise K2Error(f"field {name!r} must not be negative, got {show(value)}", path=path)
    if value == 0 and name in POSITIVE:
        raise K2Error(f"field {name!r} must be at least 1, got 0", path=path)
    limit = LIMITS.get(name, MAX_DIM)
    if value > limit:
        raise K2Error(f"field {name!r} must be at most {limit:,}, got {show(value)}", path=path)


CONFIG_FIELD_NAMES = tuple(f.name for f in fields(ModelConfig) if f.name not in ("raw", "path"))
