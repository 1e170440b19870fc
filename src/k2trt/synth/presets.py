"""Synthetic checkpoint presets: Kimi K2's config with smaller sizes, and the real shard naming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from k2trt.errors import K2Error
from k2trt.models.kimi_k2 import RELEASE_ROPE_FACTOR, kimi_k2_config

# Size overrides on top of the real config. Every preset keeps at least one dimension that is
# not a multiple of 128 so partial FP8 edge blocks are exercised (Kimi: kv_a 576 rows).
# `vocab_size` sets the embedding and lm_head rows; the synthetic tokenizer stays small and the
# rows past its ids are never looked up (they exist so sizes and memory peaks are the real ones).
PRESETS: dict[str, dict[str, int]] = {
    # a few MB; loads and runs in transformers on CPU in well under a second
    "tiny": {
        "hidden_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 192,
        "kv_lora_rank": 128,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "v_head_dim": 32,
        "intermediate_size": 512,
        "moe_intermediate_size": 160,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
    },
    # tens of MB: more blocks per tensor, still quick
    "small": {
        "hidden_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "q_lora_rank": 384,
        "kv_lora_rank": 256,
        "qk_nope_head_dim": 64,
        "qk_rope_head_dim": 32,
        "v_head_dim": 64,
        "intermediate_size": 2816,
        "moe_intermediate_size": 704,
        "n_routed_experts": 16,
        "num_experts_per_tok": 4,
    },
    # Kimi K2's real hidden sizes and vocabulary, few layers and experts (~6.7 GB at the
    # defaults, 4.7 GB of it the two 2.35 GB BF16 vocabulary tensors): benchmarks, memory peaks
    "k2-slice": {"num_hidden_layers": 4, "n_routed_experts": 8, "vocab_size": 163_840},
}


@dataclass(frozen=True)
class SynthOptions:
    """What `k2trt synth` makes."""

    preset: str = "tiny"
    release: str = "0711"
    layers: int | None = None
    experts: int | None = None
    seed: int = 0


def synth_config(opts: SynthOptions, vocab_size: int, bos: int, eos: int) -> dict[str, Any]:
    """Kimi K2's config.json for a release with the preset's (and the caller's) sizes."""
    if opts.preset not in PRESETS:
        raise K2Error(f"unknown preset {opts.preset!r} (known: {', '.join(PRESETS)})")
    if opts.release not in RELEASE_ROPE_FACTOR:
        raise K2Error(f"unknown release {opts.release!r} (known: {', '.join(RELEASE_ROPE_FACTOR)})")
    cfg = kimi_k2_config(opts.release)
    preset = PRESETS[opts.preset]
    cfg.update(preset)
    if opts.layers is not None:
        if opts.layers < 1:
            raise K2Error(f"--layers must be at least 1, got {opts.layers}")
        cfg["num_hidden_layers"] = opts.layers
    if opts.experts is not None:
        if opts.experts < 1:
            raise K2Error(f"--experts must be at least 1, got {opts.experts}")
        cfg["n_routed_experts"] = opts.experts
    cfg["num_experts_per_tok"] = min(cfg["num_experts_per_tok"], cfg["n_routed_experts"])
    # Never fewer rows than the tokenizer has ids; more (padding) where the preset says.
    rows = max(vocab_size, preset.get("vocab_size", 0))
    cfg.update(vocab_size=rows, bos_token_id=bos, eos_token_id=eos)
    return cfg


def shard_names(release: str, count: int) -> list[str]:
    """Shard file names in the release's style: 0711 unpadded, 0905 zero-padded (5 and 6).

    >>> shard_names("0905", 2)
    ['model-00001-of-000002.safetensors', 'model-00002-of-000002.safetensors']
    """
    if release == "0905":
        return [f"model-{i:05d}-of-{count:06d}.safetensors" for i in range(1, count + 1)]
    return [f"model-{i}-of-{count}.safetensors" for i in range(1, count + 1)]
