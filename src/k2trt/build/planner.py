"""Per-GPU memory of TensorRT-LLM parallel layouts for DeepSeek-V3-family models (Kimi K2).

Weights come from the architecture's tensor tables (no weight is read), split the way
TensorRT-LLM's PyTorch backend splits them; the KV cache is MLA's compressed latent; the
reserves and the KV fraction are stated assumptions (`Reserves`, `RESERVE_SOURCES`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from k2trt.build.gpus import GIB, GpuSet
from k2trt.checkpoint.safetensors import DTYPES
from k2trt.errors import K2Error
from k2trt.models.config import ModelConfig
from k2trt.models.spec import TensorSpec, architecture_for

KV_DTYPE_BYTES = {"fp8": 1, "bf16": 2}
COMPONENTS = (
    "embedding",
    "lm_head",
    "attention",
    "attention_kv_b",
    "dense_mlp",
    "shared_expert",
    "experts",
    "router",
    "norm",
    "mtp",
)

# Split rules: which divisor of a layout applies to a tensor.
REPLICATED, ATTN_TP, DENSE_TP, SHARED_TP, EXPERTS, VOCAB_TP = (
    "replicated",
    "attn_tp",
    "dense_tp",
    "shared_tp",
    "experts",
    "vocab_tp",
)
COMPONENT_RULE = {
    "embedding": REPLICATED,  # DeepseekV3Model builds Embedding without a mapping
    "lm_head": VOCAB_TP,  # column-parallel over the vocabulary unless attention-DP
    "attention": ATTN_TP,  # q_b (column), o_proj (row): split by heads
    "attention_kv_b": ATTN_TP,
    "dense_mlp": DENSE_TP,
    "shared_expert": SHARED_TP,
    "experts": EXPERTS,
    "router": REPLICATED,
    "norm": REPLICATED,
    "mtp": REPLICATED,
}
# q_a and kv_a are fused into one unsharded GEMM (DeepseekV3Linear without a mapping).
REPLICATED_SUFFIXES = ("q_a_proj.weight", "kv_a_proj_with_mqa.weight")
# The MTP layer reuses the main model's embedding and lm_head (passed into its forward).
MTP_SHARED_SUFFIXES = ("embed_tokens.weight", "shared_head.head.weight")
MTP_ROW_TP_SUFFIXES = ("eh_proj.weight",)  # row-parallel unless attention-DP
FIRST, LAST = -1, -2  # stage keys of the global tensors: embedding first, norm + lm_head last


@dataclass(frozen=True)
class Reserves:
    """Memory TensorRT-LLM needs beside weights and KV cache, per GPU (assumptions).

    >>> Reserves().kv_fraction
    0.9
    """

    max_num_tokens: int = 8192
    runtime_bytes: int = 3 * GIB
    cuda_graph_bytes: int = 1 * GIB
    cuda_graph_batch: int = 128
    hidden_buffers: int = 8
    kv_fraction: float = 0.9
    tokens_per_block: int = 32


RESERVE_SOURCES = {
    "max_num_tokens": "TensorRT-LLM LLM API default max_num_tokens (8192): the profiling forward "
    "that sizes activations runs this many tokens",
    "runtime_bytes": "CUDA context, cuBLAS/DeepGEMM workspaces, NCCL and custom all-reduce / MoE "
    "communication buffers: TensorRT-LLM logs this as memory 'outside torch' after loading "
    "weights, a few GiB on multi-GPU Hopper nodes",
    "cuda_graph_bytes": "fixed part of the CUDA-graph pool (graph executables, static I/O); "
    "graphs are captured before KV sizing, so they count against free memory",
    "cuda_graph_batch": "largest CUDA-graph decode batch; its activations add to the graph pool "
    "(Moonshot's TensorRT-LLM recipe captures batch sizes up to 128)",
    "hidden_buffers": "live bf16 hidden-sized activations per token (residual, norm, attention "
    "and MoE outputs, all-reduce buffers); MLA context q/k/v and MoE GEMM buffers are added "
    "from the config",
    "kv_fraction": "kv_cache_config.free_gpu_memory_fraction default 0.9: KV gets this share of "
    "(total - peak memory of the profiling run)",
    "tokens_per_block": "kv_cache_config.tokens_per_block default 32: a sequence takes whole "
    "blocks",
}

MODEL_NOTES = (
    "embedding: whole vocab x hidden bf16 on every rank of the first PP stage (TensorRT-LLM's "
    "DeepseekV3Model builds it without a mapping)",
    "lm_head: split over the vocabulary (padded to a multiple of TP) on the last PP stage; "
    "whole on every rank with attention-DP (enable_lm_head_tp_in_adp off, the default)",
    "attention: q_a + kv_a fused and unsharded; q_b and o_proj split by heads under TP, whole "
    "with attention-DP; FP8 block scales go with their weight",
    "kv_b: dequantized to bf16 at load (2 bytes per element) plus the k_b_proj_trans copy of its "
    "k_nope half; its FP8 scale is dropped",
    "dense MLP TP = gcd(intermediate/128, TP), then gcd with GPUs per node when larger; shared "
    "expert TP = gcd(moe_intermediate/128, TP); both 1 (replicated) with attention-DP",
    "routed experts: n_routed_experts / EP per rank, each split by MoE-TP (EP x MoE-TP = TP); "
    "no redundant experts (MoE load balancer off)",
    "router, norms: whole on every rank of their stage; rotary inv_freq is not loaded",
    "MTP layers (DeepSeek-V3) load only with speculative decoding (MTP): excluded unless "
    "requested; then on the last stage, reusing the main embedding and lm_head",
    "KV cache: MLA stores kv_lora_rank + qk_rope_head_dim per layer per token (one K-only "
    "'head'); under TP every rank holds the whole latent of every request (replicated), with "
    "attention-DP each rank holds its own requests",
    "PP: layers split as torch.tensor_split does (first stages take the extra layer), as "
    "TensorRT-LLM's Mapping.pp_layers does without pp_partition; any PP size up to "
    "num_hidden_layers is enumerated",
    "FP8 block scales are counted as float32 on every GPU generation (Blackwell resmooths "
    "them to a smaller format at load: a slight overestimate there)",
)


@dataclass(frozen=True, order=True)
class Layout:
    """One parallel layout; world = tp x pp, and EP x MoE-TP = tp for the MoE part.

    >>> Layout(tp=8, ep=8).label
    'TP8 EP8'
    """

    tp: int
    pp: int = 1
    ep: int = 1
    attention_dp: bool = False

    @property
    def moe_tp(self) -> int:
        return self.tp // self.ep

    @property
    def world(self) -> int:
        return self.tp * self.pp

    @property
    def dp(self) -> int:
        """Attention data-parallel ranks per stage (each with its own requests and KV)."""
        return self.tp if self.attention_dp else 1

    @property
    def attn_tp(self) -> int:
        return 1 if self.attention_dp else self.tp

    @property
    def label(self) -> str:
        parts = [f"{'ADP' if self.attention_dp else 'TP'}{self.tp}", f"EP{self.ep}"]
        if self.moe_tp > 1:
            parts.append(f"MoE-TP{self.moe_tp}")
        if self.pp > 1:
            parts.append(f"PP{self.pp}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "moe_tp": self.moe_tp, "label": self.label}


@dataclass(frozen=True)
class StagePlan:
    """One pipeline stage, per GPU: weights by component, what is left, KV tokens."""

    index: int
    layers: int
    weights: dict[str, int]
    free: int
    kv_bytes: int
    kv_bytes_per_token: int
    kv_tokens: int

    @property
    def weights_total(self) -> int:
        return sum(self.weights.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weights_total": self.weights_total}


@dataclass(frozen=True)
class LayoutPlan:
    """The memory verdict for one layout (all figures per GPU unless named total)."""

    layout: Layout
    dense_tp: int
    shared_tp: int
    activation: int
    cuda_graphs: int
    runtime: int
    stages: tuple[StagePlan, ...]
    kv_tokens_per_rank: int
    kv_tokens_total: int
    sequences: int
    weights_fit: bool
    request_fit: bool

    @property
    def binding(self) -> StagePlan:
        """The stage that limits the layout: fewest KV tokens, then most weights."""
        return min(self.stages, key=lambda s: (s.kv_tokens, -s.weights_total, s.index))

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout.to_dict(),
            "dense_tp": self.dense_tp,
            "shared_tp": self.shared_tp,
            "reserves": {
                "activation": self.activation,
                "cuda_graphs": self.cuda_graphs,
                "runtime": self.runtime,
            },
            "weights_per_gpu": self.binding.weights_total,
            "stages": [s.to_dict() for s in self.stages],
            "kv_tokens_per_rank": self.kv_tokens_per_rank,
            "kv_tokens_total": self.kv_tokens_total,
            "sequences": self.sequences,
            "weights_fit": self.weights_fit,
            "request_fit": self.request_fit,
        }


@dataclass(frozen=True)
class PlanReport:
    """Every layout evaluated for one request, best first.

    >>> report = plan(cfg, parse_gpus("H200x16"), 131072, 8, "fp8")  # doctest: +SKIP
    >>> report.best.layout.label                                       # doctest: +SKIP
    'ADP16 EP16'
    """

    model: dict[str, Any]
    gpus: GpuSet
    context: int
    concurrency: int
    kv_dtype: str
    mtp: bool
    explicit: bool
    reserves: Reserves
    kv_bytes_per_token: int
    loaded_bytes: int
    layouts: tuple[LayoutPlan, ...]

    @property
    def ok(self) -> bool:
        return any(p.request_fit for p in self.layouts)

    @property
    def best(self) -> LayoutPlan | None:
        return self.layouts[0] if self.layouts else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "model": self.model,
            "gpus": _gpus_dict(self.gpus),
            "request": {
                "context": self.context,
                "concurrency": self.concurrency,
                "kv_dtype": self.kv_dtype,
                "mtp": self.mtp,
            },
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "loaded_bytes": self.loaded_bytes,
            "explicit_layout": self.explicit,
            "layouts": [p.to_dict() for p in self.layouts],
            "fitting": sum(p.request_fit for p in self.layouts),
            "best": self.best.layout.label if self.best else None,
            "assumptions": assumptions(self.reserves),
        }


def assumptions(reserves: Reserves) -> dict[str, Any]:
    """The reserves with their values and sources, and the splitting rules, as data."""
    values = asdict(reserves)
    return {
        "reserves": [
            {"name": f.name, "value": values[f.name], "source": RESERVE_SOURCES[f.name]}
            for f in fields(reserves)
        ],
        "model": list(MODEL_NOTES),
    }


def _gpus_dict(gpus: GpuSet) -> dict[str, Any]:
    g = gpus.gpu
    return {
        "name": g.name,
        "count": gpus.count,
        "memory_bytes": g.memory_bytes,
        "hbm": g.hbm,
        "generation": g.generation,
        "fp8": g.fp8,
        "gpus_per_node": g.gpus_per_node,
        "source": g.source,
    }


# ---- weights: the spec tables, aggregated once into (stage key, component, rule) pieces ----

Pieces = dict[tuple[int, str, str], tuple[int, int]]  # -> (bytes, rows)


def _classify(spec: TensorSpec, cfg: ModelConfig, mtp: bool) -> tuple[int, str, str] | None:
    """(stage key, component, rule) for a non-scale tensor, or None when engines skip it."""
    if spec.component == "rotary":
        return None
    is_mtp_layer = spec.layer is not None and spec.layer >= cfg.num_hidden_layers
    if is_mtp_layer and not mtp:
        return None
    if spec.name.endswith(MTP_SHARED_SUFFIXES) and spec.component == "mtp":
        return None
    rule = COMPONENT_RULE[spec.component]
    if spec.name.endswith(REPLICATED_SUFFIXES):
        rule = REPLICATED
    elif spec.name.endswith(MTP_ROW_TP_SUFFIXES):
        rule = ATTN_TP
    if spec.layer is not None:
        return spec.layer, spec.component, rule
    return (FIRST if spec.component == "embedding" else LAST), spec.component, rule


def _tensor_bytes(spec: TensorSpec, cfg: ModelConfig) -> int:
    if spec.component == "attention_kv_b":
        # Dequantized to bf16, plus TensorRT-LLM's transposed copy of the k_nope half.
        k_nope = cfg.num_attention_heads * cfg.qk_nope_head_dim * cfg.kv_lora_rank
        return (spec.numel + k_nope) * 2
    return spec.numel * DTYPES[spec.dtype][0]


def weight_pieces(cfg: ModelConfig, mtp: bool = False) -> Pieces:
    """Loaded bytes grouped by stage key, component and split rule (scales with their weight).

    >>> weight_pieces(cfg)[(FIRST, "embedding", "replicated")]  # doctest: +SKIP
    (2348810240, 163840)
    """
    sums: defaultdict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])
    owner: dict[str, tuple[int, str, str] | None] = {}
    for spec in architecture_for(cfg).tensors(cfg):
        if spec.scale_for is not None:
            key = owner.get(spec.scale_for)
            if key is None or key[1] == "attention_kv_b":  # kv_b's scale dies with dequant
                continue
            sums[key][0] += spec.numel * DTYPES[spec.dtype][0]
            continue
        key = _classify(spec, cfg, mtp)
        owner[spec.name] = key
        if key is not None:
            sums[key][0] += _tensor_bytes(spec, cfg)
            sums[key][1] += spec.shape[0]
    return {k: (v[0], v[1]) for k, v in sorted(sums.items())}


def mlp_tp_sizes(cfg: ModelConfig, layout: Layout, gpus_per_node: int) -> tuple[int, int]:
    """(dense MLP TP, shared-expert TP) as TensorRT-LLM caps them for block-scaled weights.

    >>> mlp_tp_sizes(kimi, Layout(tp=16, ep=16), 8)  # doctest: +SKIP
    (8, 16)
    """
    if layout.attention_dp:
        return 1, 1
    block = cfg.fp8_block[0] if cfg.fp8_block else 1
    dense = math.gcd(cfg.intermediate_size // block, layout.tp)
    if dense > gpus_per_node:
        dense = math.gcd(dense, gpus_per_node)
    shared_ff = cfg.moe_intermediate_size * cfg.n_shared_experts
    shared = math.gcd(shared_ff // block, layout.tp) if shared_ff else 1
    return dense, shared


def stage_sizes(layers: int, pp: int) -> list[int]:
    """Layers per PP stage as torch.tensor_split gives them (first stages take the extra).

    >>> stage_sizes(61, 8)
    [8, 8, 8, 8, 8, 7, 7, 7]
    """
    base, extra = divmod(layers, pp)
    return [base + (1 if s < extra else 0) for s in range(pp)]


def _stage_of(cfg: ModelConfig, pp: int) -> dict[int, int]:
    stage: dict[int, int] = {FIRST: 0, LAST: pp - 1}
    layer = 0
    for index, size in enumerate(stage_sizes(cfg.num_hidden_layers, pp)):
        for _ in range(size):
            stage[layer] = index
            layer += 1
    return stage


def stage_weights(
    pieces: Pieces, cfg: ModelConfig, layout: Layout, mlp_tp: tuple[int, int]
) -> list[dict[str, int]]:
    """Weights per GPU by component, for each PP stage (MTP layers go to the last stage)."""
    divisor = {
        REPLICATED: 1,
        ATTN_TP: layout.attn_tp,
        DENSE_TP: mlp_tp[0],
        SHARED_TP: mlp_tp[1],
        EXPERTS: layout.ep * layout.moe_tp,
        VOCAB_TP: layout.attn_tp,
    }
    stage_of = _stage_of(cfg, layout.pp)
    out = [dict.fromkeys(COMPONENTS, 0) for _ in range(layout.pp)]
    for (key, component, rule), (nbytes, rows) in pieces.items():
        stage = stage_of.get(key, layout.pp - 1)
        share = divisor[rule]
        if rule == VOCAB_TP:  # the vocabulary is padded to a multiple of TP
            out[stage][component] += math.ceil(rows / share) * (nbytes // rows)
        else:
            out[stage][component] += -(-nbytes // share)
    return out


# ---- KV cache and reserves ----


def kv_bytes_per_token_per_layer(cfg: ModelConfig, kv_dtype: str) -> int:
    """MLA cache per token per layer on one GPU: the latent plus the rope key, K only.

    >>> kv_bytes_per_token_per_layer(kimi, "fp8")  # doctest: +SKIP
    576
    """
    return (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * KV_DTYPE_BYTES[kv_dtype]


def activation_per_token(cfg: ModelConfig, layout: Layout, dense_tp: int, r: Reserves) -> int:
    """Activation bytes per scheduled token on one GPU (the profiling forward's peak / token).

    Hidden-sized bf16 buffers, MLA's context-phase q/k/v for the local heads, and the larger of
    the MoE GEMM buffers (the routes a rank receives on average; with attention-DP the MoE
    sees every DP rank's tokens) and the dense MLP's.
    """
    act = 1 if cfg.fp8_block else 2  # FP8 GEMM inputs are quantized activations
    hidden = cfg.hidden_size
    heads = cfg.num_attention_heads // layout.attn_tp
    qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    mla = heads * (2 * qk + cfg.v_head_dim) * 2
    ff = cfg.moe_intermediate_size // layout.moe_tp
    per_route = hidden * act + 2 * ff * 2 + ff * act + hidden * 2
    moe = layout.dp * cfg.num_experts_per_tok * per_route // layout.ep
    dff = cfg.intermediate_size // dense_tp
    dense = 2 * dff * 2 + dff * act
    return r.hidden_buffers * hidden * 2 + mla + max(moe, dense)


@dataclass(frozen=True)
class _Ctx:
    """What every layout of one request shares."""

    cfg: ModelConfig
    gpus: GpuSet
    context: int
    concurrency: int
    kv_dtype: str
    mtp: bool
    reserves: Reserves
    pieces: Pieces


def _stage_plan(
    index: int,
    weights: dict[str, int],
    layers: int,
    overhead: int,
    per_layer: int,
    ctx: _Ctx,
) -> StagePlan:
    free = ctx.gpus.gpu.memory_bytes - sum(weights.values()) - overhead
    kv_bytes = int(max(free, 0) * ctx.reserves.kv_fraction)
    per_token = layers * per_layer
    block = ctx.reserves.tokens_per_block
    tokens = (kv_bytes // per_token) // block * block if per_token else 0
    return StagePlan(index, layers, weights, free, kv_bytes, per_token, tokens)


def evaluate(ctx: _Ctx, layout: Layout) -> LayoutPlan:
    """Weights, reserves and KV tokens of one layout, and whether the request fits."""
    cfg, r = ctx.cfg, ctx.reserves
    mlp_tp = mlp_tp_sizes(cfg, layout, ctx.gpus.gpu.gpus_per_node)
    per_token = activation_per_token(cfg, layout, mlp_tp[0], r)
    activation = r.max_num_tokens * per_token
    graphs = r.cuda_graph_bytes + r.cuda_graph_batch * per_token
    overhead = activation + graphs + r.runtime_bytes
    per_layer = kv_bytes_per_token_per_layer(cfg, ctx.kv_dtype)
    sizes = stage_sizes(cfg.num_hidden_layers, layout.pp)
    sizes[-1] += cfg.num_nextn_predict_layers if ctx.mtp else 0  # MTP layers keep KV too
    weights = stage_weights(ctx.pieces, cfg, layout, mlp_tp)
    stages = tuple(
        _stage_plan(i, w, n, overhead, per_layer, ctx)
        for i, (w, n) in enumerate(zip(weights, sizes, strict=True))
    )
    weights_fit = all(s.free > 0 and s.kv_tokens > 0 for s in stages)
    per_rank = min(s.kv_tokens for s in stages) if weights_fit else 0
    blocks_per_seq = math.ceil(ctx.context / r.tokens_per_block)
    sequences = per_rank // r.tokens_per_block // blocks_per_seq * layout.dp
    return LayoutPlan(
        layout=layout,
        dense_tp=mlp_tp[0],
        shared_tp=mlp_tp[1],
        activation=activation,
        cuda_graphs=graphs,
        runtime=r.runtime_bytes,
        stages=stages,
        kv_tokens_per_rank=per_rank,
        kv_tokens_total=per_rank * layout.dp,
        sequences=sequences,
        weights_fit=weights_fit,
        request_fit=weights_fit and sequences >= ctx.concurrency,
    )


# ---- layouts: enumeration and validation ----


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _moe_tp_ok(cfg: ModelConfig, moe_tp: int) -> bool:
    # Each MoE-TP shard of an expert must hold whole 128-wide scale blocks (FP8); an unsplit
    # expert (MoE-TP 1) is fine whatever its size (partial edge blocks are stored as such).
    block = cfg.fp8_block[0] if cfg.fp8_block else 1
    return moe_tp == 1 or cfg.moe_intermediate_size % (block * moe_tp) == 0


def layouts(cfg: ModelConfig, count: int) -> Iterator[Layout]:
    """Every sensible layout of `count` GPUs: TP x PP = count, EP x MoE-TP = TP.

    PP stages may be uneven (TensorRT-LLM splits layers with torch.tensor_split), so any PP
    size up to num_hidden_layers; TP divides the attention heads unless attention-DP (which
    does not split heads); EP divides n_routed_experts.
    """
    for pp in _divisors(count):
        if pp > cfg.num_hidden_layers:
            continue
        tp = count // pp
        for adp in (False, True) if tp > 1 else (False,):
            if not adp and cfg.num_attention_heads % tp:
                continue
            for ep in _divisors(tp):
                if cfg.n_routed_experts % ep == 0 and _moe_tp_ok(cfg, tp // ep):
                    yield Layout(tp=tp, pp=pp, ep=ep, attention_dp=adp)


def make_layout(
    cfg: ModelConfig,
    gpus: GpuSet,
    tp: int | None = None,
    ep: int | None = None,
    pp: int | None = None,
    attention_dp: bool = False,
) -> Layout:
    """An explicit layout, checked (one-line K2Error naming the option and the numbers).

    Unset --pp is 1, unset --tp is count / pp; unset --ep is 1 (TensorRT-LLM's default
    puts the whole TP group on MoE-TP).

    >>> make_layout(cfg, parse_gpus("H200x8"), tp=8, ep=8).label  # doctest: +SKIP
    'TP8 EP8'
    """
    pp = 1 if pp is None else pp
    _check_sizes(tp=tp, ep=ep, pp=pp)
    tp = gpus.count // pp if tp is None else tp
    layout = Layout(tp=tp, pp=pp, ep=1 if ep is None else ep, attention_dp=attention_dp)
    _check_layout(cfg, gpus, layout)
    return layout


def _check_sizes(**sizes: int | None) -> None:
    for option, value in sizes.items():
        if value is not None and value < 1:
            raise K2Error(f"--{option} must be at least 1, got {value}")


def _check_layout(cfg: ModelConfig, gpus: GpuSet, lay: Layout) -> None:
    _check_sizes(tp=lay.tp, ep=lay.ep, pp=lay.pp)
    if lay.tp * lay.pp != gpus.count:
        raise K2Error(
            f"--tp {lay.tp} x --pp {lay.pp} = {lay.tp * lay.pp} GPUs, but --gpus {gpus.label} "
            f"has {gpus.count}"
        )
    if lay.pp > cfg.num_hidden_layers:
        raise K2Error(f"--pp {lay.pp} exceeds num_hidden_layers {cfg.num_hidden_layers}")
    if not lay.attention_dp and cfg.num_attention_heads % lay.tp:
        raise K2Error(
            f"--tp {lay.tp} does not divide num_attention_heads {cfg.num_attention_heads} "
            f"(or use --attention-dp)"
        )
    if lay.tp % lay.ep:
        raise K2Error(f"--ep {lay.ep} does not divide --tp {lay.tp} (EP x MoE-TP = TP)")
    if cfg.n_routed_experts % lay.ep:
        raise K2Error(f"--ep {lay.ep} does not divide n_routed_experts {cfg.n_routed_experts}")
    if not _moe_tp_ok(cfg, lay.moe_tp):
        raise K2Error(
            f"MoE-TP {lay.moe_tp} (--tp {lay.tp} / --ep {lay.ep}) does not split "
            f"moe_intermediate_size {cfg.moe_intermediate_size} into whole 128-wide blocks"
        )


# ---- the plan ----


def _rank_key(p: LayoutPlan) -> tuple[Any, ...]:
    # Fit first; then fewer PP stages: a pipeline adds a bubble and a stage hop per token that
    # a memory plan does not price, so PP ranks first only when no shallower layout fits (its
    # extra KV beyond the request is headroom, not a reason). Then most KV tokens, the least
    # short of memory (for layouts that do not fit), and the layout itself (determinism).
    return (
        not p.request_fit,
        not p.weights_fit,
        p.layout.pp,
        -p.kv_tokens_total,
        -p.binding.free,
        p.layout,
    )


def _check_request(cfg: ModelConfig, context: int, concurrency: int, kv_dtype: str) -> None:
    if context < 1:
        raise K2Error(f"--context must be at least 1, got {context}")
    if context > cfg.max_position_embeddings:
        raise K2Error(
            f"--context {context} exceeds max_position_embeddings {cfg.max_position_embeddings}",
            path=cfg.path,
        )
    if concurrency < 1:
        raise K2Error(f"--concurrency must be at least 1, got {concurrency}")
    if kv_dtype not in KV_DTYPE_BYTES:
        raise K2Error(f"--kv-dtype must be fp8 or bf16, got {kv_dtype!r}")


def plan(
    cfg: ModelConfig,
    gpus: GpuSet,
    context: int,
    concurrency: int,
    kv_dtype: str = "fp8",
    layout: Layout | None = None,
    *,
    reserves: Reserves | None = None,
    mtp: bool = False,
) -> PlanReport:
    """Evaluate one layout, or every sensible one, for `concurrency` requests of `context`.

    >>> plan(cfg, parse_gpus("H100x8"), 131072, 1, "fp8").ok  # doctest: +SKIP
    False
    """
    _check_request(cfg, context, concurrency, kv_dtype)
    if layout is not None:
        _check_layout(cfg, gpus, layout)
    r = reserves or Reserves()
    pieces = weight_pieces(cfg, mtp)
    ctx = _Ctx(cfg, gpus, context, concurrency, kv_dtype, mtp, r, pieces)
    candidates = [layout] if layout is not None else list(layouts(cfg, gpus.count))
    evaluated = sorted((evaluate(ctx, lay) for lay in candidates), key=_rank_key)
    layers = cfg.num_hidden_layers + (cfg.num_nextn_predict_layers if mtp else 0)
    return PlanReport(
        model=_model_dict(cfg),
        gpus=gpus,
        context=context,
        concurrency=concurrency,
        kv_dtype=kv_dtype,
        mtp=mtp,
        explicit=layout is not None,
        reserves=r,
        kv_bytes_per_token=layers * kv_bytes_per_token_per_layer(cfg, kv_dtype),
        loaded_bytes=sum(b for b, _ in pieces.values()),
        layouts=tuple(evaluated),
    )


def _model_dict(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "path": cfg.path,
        "model_type": cfg.model_type,
        "architecture": architecture_for(cfg).name,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_nextn_predict_layers": cfg.num_nextn_predict_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "n_routed_experts": cfg.n_routed_experts,
        "max_position_embeddings": cfg.max_position_embeddings,
        "fp8": cfg.fp8_block is not None,
    }
