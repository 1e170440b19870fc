"""Write a checkpoint in exactly Kimi K2's on-disk format, at any scale, one tensor at a time."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2trt.checkpoint.fp8 import quantize_blocks
from k2trt.checkpoint.reader import INDEX_NAME
from k2trt.checkpoint.safetensors import DTYPES, ShardWriter
from k2trt.fsutil import atomic_dir, write_json_atomic
from k2trt.models.config import ModelConfig
from k2trt.models.spec import TensorSpec, architecture_for
from k2trt.output import Ticker
from k2trt.synth.presets import SynthOptions, shard_names, synth_config
from k2trt.synth.tokenizer import write_tokenizer

if TYPE_CHECKING:
    import torch

# The real checkpoint ships remote code. We ship files of the same names that fail loudly if
# anything ever executes them: k2trt must never run code from a checkpoint.
REMOTE_CODE_FILES = ("configuration_deepseek.py", "modeling_deepseek.py", "tokenization_kimi.py")
REMOTE_CODE_TRAP = (
    '"""k2trt synthetic checkpoint: stands in for remote code that must never be executed."""\n'
    'raise RuntimeError("k2trt: code from a checkpoint was executed (trust_remote_code?)")\n'
)


@dataclass(frozen=True)
class SynthResult:
    """What was written."""

    path: Path
    config: dict[str, Any]
    shards: list[str]
    tensors: int
    bytes: int


def _generator(seed: int, name: str) -> torch.Generator:
    """A generator per tensor: values depend on (seed, name) only, not on write order."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _values(spec: TensorSpec, cfg: ModelConfig, seed: int) -> torch.Tensor:
    """Real-valued random contents with plausible magnitudes for the tensor's role."""
    import torch

    if spec.component == "rotary":
        d = cfg.qk_rope_head_dim
        exps = torch.arange(0, d, 2, dtype=torch.float32) / d
        return 1.0 / (cfg.rope_theta**exps)
    gen = _generator(seed, spec.name)
    x = torch.randn(spec.shape, generator=gen, dtype=torch.float32)
    if spec.component in ("norm", "mtp") and len(spec.shape) == 1:
        return 1.0 + 0.05 * x
    if spec.name.endswith("e_score_correction_bias"):
        return 0.01 * x
    if len(spec.shape) == 2 and spec.component not in ("embedding", "lm_head", "router"):
        return x / math.sqrt(spec.shape[1])  # unit-variance outputs
    return 0.02 * x


def _tensor_stream(cfg: ModelConfig, seed: int) -> Iterator[tuple[TensorSpec, torch.Tensor]]:
    """(spec, stored tensor) in spec order; an FP8 weight's scale follows it."""
    import torch

    pending_scale: torch.Tensor | None = None
    block = cfg.fp8_block
    for spec in architecture_for(cfg).tensors(cfg):
        if spec.scale_for is not None:
            assert pending_scale is not None
            yield spec, pending_scale
            pending_scale = None
            continue
        values = _values(spec, cfg, seed)
        if spec.dtype == "F8_E4M3":
            assert block is not None
            q, pending_scale = quantize_blocks(values, block)
            yield spec, q
        else:
            dtype = torch.bfloat16 if spec.dtype == "BF16" else torch.float32
            yield spec, values.to(dtype)


def _shard_of(spec: TensorSpec, cfg: ModelConfig, count: int) -> int:
    """Layer L in shard L; embeddings first; final norm and lm_head in the last shard."""
    if spec.layer is None:
        return 0 if spec.component == "embedding" else count - 1
    return min(spec.layer, count - 1)


def plan_shards(cfg: ModelConfig, release: str) -> dict[str, list[TensorSpec]]:
    """Shard file name -> its tensors. 0905 adds one shard for the head, as the real one does."""
    layers = cfg.num_hidden_layers
    count = max(1, layers + (1 if release == "0905" else 0))
    names = shard_names(release, count)
    plan: dict[str, list[TensorSpec]] = {n: [] for n in names}
    for spec in architecture_for(cfg).tensors(cfg):
        plan[names[_shard_of(spec, cfg, count)]].append(spec)
    return plan


def write_checkpoint(
    out: Path,
    opts: SynthOptions,
    *,
    force: bool = False,
    progress: Ticker | None = None,
) -> SynthResult:
    """Write a synthetic Kimi K2 checkpoint to `out` (atomically).

    >>> write_checkpoint(Path("tiny"), SynthOptions(preset="tiny", seed=0))  # doctest: +SKIP
    """
    with atomic_dir(out, force=force) as tmp:
        tok = write_tokenizer(tmp, release=opts.release)
        raw_cfg = synth_config(opts, tok.vocab_size, tok.bos_token_id, tok.eos_token_id)
        cfg = ModelConfig.from_dict(raw_cfg)
        plan = plan_shards(cfg, opts.release)
        weight_map = {s.name: shard for shard, specs in plan.items() for s in specs}
        total = sum(s.numel * DTYPES[s.dtype][0] for specs in plan.values() for s in specs)
        if progress:
            progress.total(total)
        _write_shards(tmp, cfg, plan, opts.seed, progress)
        write_json_atomic(tmp / "config.json", raw_cfg)
        write_json_atomic(tmp / "generation_config.json", _generation_config(raw_cfg))
        for name in REMOTE_CODE_FILES:
            (tmp / name).write_text(REMOTE_CODE_TRAP)
        # The index goes last: a checkpoint without it is not a checkpoint.
        write_json_atomic(
            tmp / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map}
        )
    return SynthResult(out, raw_cfg, list(plan), len(weight_map), total)


def _write_shards(
    tmp: Path,
    cfg: ModelConfig,
    plan: dict[str, list[TensorSpec]],
    seed: int,
    progress: Ticker | None,
) -> None:
    stream = _tensor_stream(cfg, seed)
    for shard, specs in plan.items():
        entries = [(s.name, s.dtype, s.shape) for s in specs]
        with ShardWriter(tmp / shard, entries, metadata={"format": "pt"}) as writer:
            for spec in specs:
                got, tensor = next(stream)
                assert got.name == spec.name
                writer.write(spec.name, tensor)
                if progress:
                    progress(spec.numel * DTYPES[spec.dtype][0])


def _generation_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "bos_token_id": cfg["bos_token_id"],
        "eos_token_id": cfg["eos_token_id"],
        "max_length": cfg["max_position_embeddings"],
    }
