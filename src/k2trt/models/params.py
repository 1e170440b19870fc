"""Parameter and byte counts derived from a config alone (no weights needed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from k2trt.checkpoint.safetensors import DTYPES
from k2trt.models.config import ModelConfig
from k2trt.models.spec import architecture_for


@dataclass(frozen=True)
class ParamCounts:
    """Counts for one config.

    `stored` counts every element of every tensor the checkpoint stores (weights, FP8 block
    scales and rotary inv_freq): the figure Hugging Face publishes for a checkpoint.
    `weights` leaves out scales and rotary caches. `activated` is the weights one token uses:
    everything except the routed experts it is not sent to (top-k of n per MoE layer) and the
    multi-token-prediction layers (DeepSeek-V3's speculative head; Kimi K2 has none).
    """

    stored: int
    weights: int
    scales: int
    rotary: int
    activated: int
    tensors: int
    by_component: dict[str, int] = field(default_factory=dict)
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())


def count_params(cfg: ModelConfig) -> ParamCounts:
    """Total the spec in closed form: each group of identical tensors (all MoE layers' routers,
    all experts' down_proj, ...) is counted once and multiplied, so the cost does not grow with
    the layer or expert count.

    >>> from k2trt.models.kimi_k2 import kimi_k2_config
    >>> count_params(ModelConfig.from_dict(kimi_k2_config())).stored
    1026470729592
    """
    by_component: Counter[str] = Counter()
    by_dtype: Counter[str] = Counter()
    tensors = 0
    mtp = 0
    for count, specs in architecture_for(cfg).groups(cfg):
        for spec in specs:
            tensors += count
            numel = count * spec.numel
            if spec.layer is not None and spec.layer >= cfg.num_hidden_layers:
                mtp += numel if spec.component not in ("scale", "rotary") else 0
            by_component[spec.component] += numel
            by_dtype[spec.dtype] += numel * DTYPES[spec.dtype][0]
    scales = by_component["scale"]
    rotary = by_component["rotary"]
    stored = sum(by_component.values())
    weights = stored - scales - rotary
    moe_layers = cfg.moe_layers_between(0, cfg.num_hidden_layers)
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    idle = moe_layers * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert
    return ParamCounts(
        stored=stored,
        weights=weights,
        scales=scales,
        rotary=rotary,
        activated=weights - idle - mtp,
        tensors=tensors,
        by_component=dict(sorted(by_component.items())),
        bytes_by_dtype=dict(sorted(by_dtype.items())),
    )
