"""What happens to each tensor in `convert` and `slice`: a transform table, the plan, the bytes.

One op per source tensor, decided from its name (a table of roles) and the options:

| role    | fp8 output | bf16 output | slice                                     |
|---------|------------|-------------|-------------------------------------------|
| rotary  | keep       | keep        | (dropped with drop_extra)                 |
| scale   | keep       | drop        | folded into its weight by dequantization  |
| fp8     | keep       | dequantize  |                                           |
| router  | keep       | keep        | slice-rows: the first E experts' rows     |
| other   | keep       | keep        |                                           |

and a slice drops every tensor of a layer >= N or an expert >= E before the table applies.
Names never change: TensorRT-LLM and transformers read the same names the source has.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from k2trt.checkpoint.fp8 import iter_dequantized
from k2trt.checkpoint.inspection import bad_scales
from k2trt.checkpoint.reader import Checkpoint
from k2trt.checkpoint.safetensors import DTYPES, ShardFiles, TensorInfo
from k2trt.errors import K2Error
from k2trt.models.config import ModelConfig

if TYPE_CHECKING:
    import torch


class Op(str, Enum):
    KEEP = "keep"
    DROP = "drop"
    DEQUANT = "dequantize"
    ROWS = "slice-rows"


# Name -> role; first match wins. Tensors matching nothing are "fp8" (by stored dtype) or "other".
ROLES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Stored by the originals, recomputed by every engine and never looked up by TensorRT-LLM's
    # loader: harmless to keep (then unchanged shards can be linked), dropped with drop_extra.
    (re.compile(r"\.self_attn\.rotary_emb\.inv_freq$"), "rotary"),
    (re.compile(r"_scale_inv$"), "scale"),
    # One row (one entry) per routed expert: cut to the experts a slice keeps.
    (re.compile(r"\.mlp\.gate\.(weight|e_score_correction_bias)$"), "router"),
)
# (role, output dtype) -> op, before slicing and drop_extra adjust it.
TRANSFORMS: dict[tuple[str, str], Op] = {
    ("rotary", "fp8"): Op.KEEP,
    ("rotary", "bf16"): Op.KEEP,
    ("scale", "fp8"): Op.KEEP,
    ("scale", "bf16"): Op.DROP,
    ("fp8", "fp8"): Op.KEEP,
    ("fp8", "bf16"): Op.DEQUANT,
    ("router", "fp8"): Op.KEEP,
    ("router", "bf16"): Op.KEEP,
    ("other", "fp8"): Op.KEEP,
    ("other", "bf16"): Op.KEEP,
}
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
EXPERT_RE = re.compile(r"\.mlp\.experts\.(\d+)\.")


@dataclass(frozen=True)
class Selection:
    """The tensors a run keeps and how it changes them.

    >>> Selection("bf16", drop_extra=True, layers=2, experts=3, source_experts=8).slicing_experts
    True
    """

    dtype: str = "fp8"
    drop_extra: bool = False
    layers: int | None = None  # keep layers [0, layers); None: all (and any MTP layers)
    experts: int | None = None  # keep experts [0, experts); None: all
    source_experts: int = 0

    @property
    def slicing_experts(self) -> bool:
        return self.experts is not None and self.experts < self.source_experts

    def keeps(self, name: str) -> bool:
        layer = LAYER_RE.match(name)
        if self.layers is not None and layer and int(layer.group(1)) >= self.layers:
            return False
        expert = EXPERT_RE.search(name)
        return not (self.experts is not None and expert and int(expert.group(1)) >= self.experts)


def role_of(name: str, dtype: str) -> str:
    for pattern, role in ROLES:
        if pattern.search(name):
            return role
    return "fp8" if dtype == "F8_E4M3" else "other"


def op_for(name: str, dtype: str, sel: Selection) -> Op:
    """The op for one source tensor.

    >>> op_for("model.layers.0.self_attn.o_proj.weight", "F8_E4M3", Selection("bf16")).value
    'dequantize'
    """
    if not sel.keeps(name):
        return Op.DROP
    role = role_of(name, dtype)
    if role == "rotary" and sel.drop_extra:
        return Op.DROP
    if role == "router" and sel.slicing_experts:
        return Op.ROWS
    return TRANSFORMS[(role, sel.dtype)]


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: where it comes from, what is done to it, what it becomes."""

    op: Op
    src: TensorInfo
    dtype: str
    shape: tuple[int, ...]
    scale: TensorInfo | None = None  # the block scale a dequantized weight is multiplied by

    @property
    def name(self) -> str:
        return self.src.name

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype][0]
        for d in self.shape:
            n *= d
        return n

    @property
    def entry(self) -> tuple[str, str, tuple[int, ...]]:
        return self.name, self.dtype, self.shape


def shard_sort_key(name: str) -> list[Any]:
    """Natural order, so `model-10-of-61` follows `model-9-of-61` (0711 names are unpadded)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def source_order(ckpt: Checkpoint) -> list[TensorInfo]:
    """Every source tensor: shards in natural order, tensors in file (offset) order."""
    return sorted(ckpt.infos.values(), key=lambda i: (shard_sort_key(i.shard.name), i.start))


def plan_tensors(ckpt: Checkpoint, sel: Selection) -> tuple[list[TensorPlan], list[str]]:
    """Output tensors in source order, and the names dropped.

    >>> kept, dropped = plan_tensors(ckpt, Selection("fp8"))  # doctest: +SKIP
    """
    kept: list[TensorPlan] = []
    dropped: list[str] = []
    for info in source_order(ckpt):
        op = op_for(info.name, info.dtype, sel)
        if op is Op.DROP:
            dropped.append(info.name)
        else:
            kept.append(_plan_one(ckpt, info, op, sel))
    return kept, dropped


def _plan_one(ckpt: Checkpoint, info: TensorInfo, op: Op, sel: Selection) -> TensorPlan:
    if op is Op.ROWS:
        assert sel.experts is not None
        if not info.shape or info.shape[0] != sel.source_experts:
            raise K2Error(
                f"tensor {info.name!r}: expected {sel.source_experts} rows (one per expert), "
                f"found shape {list(info.shape)}",
                path=info.shard,
            )
        return TensorPlan(op, info, info.dtype, (sel.experts, *info.shape[1:]))
    if op is Op.DEQUANT:
        scale = ckpt.infos.get(info.name + "_scale_inv")
        if scale is None or len(info.shape) != 2:
            raise K2Error(
                f"tensor {info.name!r}: FP8 weight without a 2-D block scale "
                f"({info.name}_scale_inv); cannot dequantize",
                path=info.shard,
            )
        return TensorPlan(op, info, "BF16", info.shape, scale)
    return TensorPlan(op, info, info.dtype, info.shape)


# ---------------------------------------------------------------------------------------------
# Slicing the config


def slice_overrides(
    cfg: ModelConfig, layers: int | None, experts: int | None
) -> dict[str, tuple[Any, str]]:
    """config.json fields a slice changes, each with why (for `write_metadata`).

    >>> slice_overrides(cfg, 2, 3)["n_routed_experts"]  # doctest: +SKIP
    (3, 'slice: experts 0..2 of 384')
    """
    out: dict[str, tuple[Any, str]] = {}
    if layers is not None and layers < cfg.num_hidden_layers:
        out["num_hidden_layers"] = (
            layers,
            f"slice: layers 0..{layers - 1} of {cfg.num_hidden_layers}",
        )
        if cfg.num_nextn_predict_layers:
            out["num_nextn_predict_layers"] = (0, "slice: the MTP layers follow the layers cut")
        if cfg.first_k_dense_replace > layers:
            out["first_k_dense_replace"] = (layers, "slice: cannot exceed num_hidden_layers")
    if experts is not None and experts < cfg.n_routed_experts:
        out.update(_expert_overrides(cfg, experts))
    return out


def _expert_overrides(cfg: ModelConfig, experts: int) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {
        "n_routed_experts": (experts, f"slice: experts 0..{experts - 1} of {cfg.n_routed_experts}")
    }
    top_k = min(cfg.num_experts_per_tok, experts)
    if top_k != cfg.num_experts_per_tok:
        out["num_experts_per_tok"] = (top_k, f"slice: top-k cannot exceed the {experts} experts")
    groups, per_group = cfg.n_group, experts // cfg.n_group
    # Grouped routing needs equal groups, ranks groups by their top-2 scores (>= 2 experts per
    # group) and must find top-k experts inside the topk_group groups it picks.
    fits = experts % groups == 0 and (groups == 1 or per_group >= 2)
    if groups > 1 and not (fits and top_k <= min(cfg.topk_group, groups) * per_group):
        why = f"slice: grouped routing ({groups} groups) does not fit {experts} experts"
        out["n_group"] = (1, why)
        if cfg.topk_group != 1:
            out["topk_group"] = (1, why)
    return out


# ---------------------------------------------------------------------------------------------
# Producing output bytes


STREAM_CHUNK = 32 << 20  # a kept tensor is copied through in pieces of this size
# (file offset, source bytes) for every piece of a source tensor read, in file order.
Seen = Callable[[int, NDArray[Any]], None]


def read_raw(files: ShardFiles, info: TensorInfo) -> NDArray[Any]:
    """A tensor's stored bytes (flat uint8, a fresh buffer); read errors name the shard."""
    buf = np.empty(info.nbytes, dtype=np.uint8)
    _read_into(files, info, buf)
    return buf


def _read_into(files: ShardFiles, info: TensorInfo, buf: NDArray[Any]) -> None:
    try:
        files.read_into(info, buf.data)
    except OSError as exc:
        raise K2Error(
            f"tensor {info.name!r}: cannot read: {exc.strerror or exc}", path=info.shard
        ) from None


def iter_raw(
    files: ShardFiles, info: TensorInfo, nbytes: int, chunk: int | None = None
) -> Iterator[tuple[int, NDArray[Any]]]:
    """(file offset, bytes) pieces of a tensor's first `nbytes` stored bytes through one reused
    buffer, so a 2.35 GB embedding never sits in memory whole. Use each piece before the next.

    >>> [len(b) for _, b in iter_raw(files, info, 10, chunk=4)]  # doctest: +SKIP
    [4, 4, 2]
    """
    chunk = chunk or STREAM_CHUNK
    buf = np.empty(min(chunk, nbytes), dtype=np.uint8)
    for offset in range(info.start, info.start + nbytes, chunk):
        n = min(chunk, info.start + nbytes - offset)
        piece = replace(info, start=offset, end=offset + n)
        _read_into(files, piece, buf[:n])
        yield offset, buf[:n]


def check_scale(info: TensorInfo, raw: NDArray[Any]) -> None:
    """Every block scale finite and positive (what `inspect --deep` checks), or a K2Error."""
    problem = bad_scales(raw.view("<f4").reshape(info.shape))
    if problem:
        raise K2Error(f"tensor {info.name!r}: {problem}", path=info.shard)


def transform(
    plan: TensorPlan,
    files: ShardFiles,
    block: tuple[int, int] | None,
    seen: Seen | None = None,
) -> Iterator[NDArray[Any] | torch.Tensor]:
    """The output tensor for `plan` as consecutive byte pieces; scales are checked on the way.
    `seen(offset, bytes)` gets every source piece read (to hash the source on the way).

    KEEP yields the stored bytes unchanged (byte-identical output by construction) and ROWS a
    prefix of them, both in STREAM_CHUNK pieces; DEQUANT yields one block-row at a time, so a
    264 MB weight never exists whole in bf16. Write each piece before taking the next: buffers
    are reused.
    """
    if plan.op is Op.DEQUANT or role_of(plan.name, plan.src.dtype) == "scale":
        raw = read_raw(files, plan.src)
        if seen:
            seen(plan.src.start, raw)
        if plan.op is not Op.DEQUANT:
            check_scale(plan.src, raw)
            yield raw
            return
        assert plan.scale is not None and block is not None
        yield from _dequantize(plan, raw, files, block)
        return
    # KEEP, or ROWS: rows are the leading dimension, the first E rows a prefix of the bytes.
    assert plan.op in (Op.KEEP, Op.ROWS)
    for offset, piece in iter_raw(files, plan.src, plan.nbytes):
        if seen:
            seen(offset, piece)
        yield piece


def _dequantize(
    plan: TensorPlan,
    raw: NDArray[Any],
    files: ShardFiles,
    block: tuple[int, int],
) -> Iterator[torch.Tensor]:
    import torch

    assert plan.scale is not None
    scale_raw = read_raw(files, plan.scale)
    check_scale(plan.scale, scale_raw)
    q = torch.from_numpy(raw).view(torch.float8_e4m3fn).view(plan.shape)
    scale = torch.from_numpy(scale_raw).view(torch.float32).view(plan.scale.shape)
    # The checkpoint's exact semantics (float32 product, one rounding) from the shared kernel.
    for _, chunk in iter_dequantized(q, scale, block, torch.bfloat16):
        yield chunk
