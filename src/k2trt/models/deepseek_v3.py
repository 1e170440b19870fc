"""DeepSeek-V3 family tensor inventory, as tables. Kimi K2 is an alias of this family.

Each table row: name template ({L} layer, {E} expert), shape as dimension names from
`ModelConfig.dims`, kind (`linear` may be block-FP8, `bf16`, `fp32`), component.
"""

from __future__ import annotations

from collections.abc import Iterator

from k2trt.models.config import ModelConfig
from k2trt.models.spec import Architecture, TensorSpec, register

Row = tuple[str, tuple[str, ...], str, str]

GLOBAL: list[Row] = [
    ("model.embed_tokens.weight", ("vocab", "hidden"), "bf16", "embedding"),
    ("model.norm.weight", ("hidden",), "bf16", "norm"),
    ("lm_head.weight", ("vocab", "hidden"), "bf16", "lm_head"),
]

LAYER_NORMS: list[Row] = [
    ("model.layers.{L}.input_layernorm.weight", ("hidden",), "bf16", "norm"),
    ("model.layers.{L}.post_attention_layernorm.weight", ("hidden",), "bf16", "norm"),
]

# MLA with a low-rank query (q_lora_rank set: DeepSeek-V3, Kimi K2).
ATTENTION_Q_LORA: list[Row] = [
    ("model.layers.{L}.self_attn.q_a_proj.weight", ("q_lora", "hidden"), "linear", "attention"),
    ("model.layers.{L}.self_attn.q_a_layernorm.weight", ("q_lora",), "bf16", "norm"),
    ("model.layers.{L}.self_attn.q_b_proj.weight", ("q_out", "q_lora"), "linear", "attention"),
]
# MLA with a full-rank query (q_lora_rank null: DeepSeek-V2-Lite style configs).
ATTENTION_Q_FULL: list[Row] = [
    ("model.layers.{L}.self_attn.q_proj.weight", ("q_out", "hidden"), "linear", "attention"),
]
ATTENTION_KV: list[Row] = [
    (
        "model.layers.{L}.self_attn.kv_a_proj_with_mqa.weight",
        ("kv_a_out", "hidden"),
        "linear",
        "attention",
    ),
    ("model.layers.{L}.self_attn.kv_a_layernorm.weight", ("kv_lora",), "bf16", "norm"),
    (
        "model.layers.{L}.self_attn.kv_b_proj.weight",
        ("kv_b_out", "kv_lora"),
        "linear",
        "attention_kv_b",
    ),
    ("model.layers.{L}.self_attn.o_proj.weight", ("hidden", "o_in"), "linear", "attention"),
]
# Stored by the original checkpoints; engines ignore it. Optional: converters drop it.
ROTARY: list[Row] = [
    ("model.layers.{L}.self_attn.rotary_emb.inv_freq", ("rope_half",), "fp32", "rotary"),
]

DENSE_MLP: list[Row] = [
    ("model.layers.{L}.mlp.gate_proj.weight", ("dense_ff", "hidden"), "linear", "dense_mlp"),
    ("model.layers.{L}.mlp.up_proj.weight", ("dense_ff", "hidden"), "linear", "dense_mlp"),
    ("model.layers.{L}.mlp.down_proj.weight", ("hidden", "dense_ff"), "linear", "dense_mlp"),
]
ROUTER: list[Row] = [
    ("model.layers.{L}.mlp.gate.weight", ("experts", "hidden"), "bf16", "router"),
]
# Only with topk_method noaux_tc (V3); V2-style routers have no correction bias.
ROUTER_BIAS: list[Row] = [
    ("model.layers.{L}.mlp.gate.e_score_correction_bias", ("experts",), "fp32", "router"),
]
SHARED_EXPERT: list[Row] = [
    (
        "model.layers.{L}.mlp.shared_experts.gate_proj.weight",
        ("shared_ff", "hidden"),
        "linear",
        "shared_expert",
    ),
    (
        "model.layers.{L}.mlp.shared_experts.up_proj.weight",
        ("shared_ff", "hidden"),
        "linear",
        "shared_expert",
    ),
    (
        "model.layers.{L}.mlp.shared_experts.down_proj.weight",
        ("hidden", "shared_ff"),
        "linear",
        "shared_expert",
    ),
]
EXPERT: list[Row] = [
    (
        "model.layers.{L}.mlp.experts.{E}.gate_proj.weight",
        ("expert_ff", "hidden"),
        "linear",
        "experts",
    ),
    (
        "model.layers.{L}.mlp.experts.{E}.up_proj.weight",
        ("expert_ff", "hidden"),
        "linear",
        "experts",
    ),
    (
        "model.layers.{L}.mlp.experts.{E}.down_proj.weight",
        ("hidden", "expert_ff"),
        "linear",
        "experts",
    ),
]
# Multi-token-prediction layers after the decoder stack (DeepSeek-V3 has one; Kimi K2 none).
# eh_proj kept bf16 here: inferred, not read from a published index.
MTP_EXTRA: list[Row] = [
    ("model.layers.{L}.embed_tokens.weight", ("vocab", "hidden"), "bf16", "mtp"),
    ("model.layers.{L}.enorm.weight", ("hidden",), "bf16", "mtp"),
    ("model.layers.{L}.hnorm.weight", ("hidden",), "bf16", "mtp"),
    ("model.layers.{L}.eh_proj.weight", ("hidden", "hidden2"), "bf16", "mtp"),
    ("model.layers.{L}.shared_head.norm.weight", ("hidden",), "bf16", "mtp"),
    ("model.layers.{L}.shared_head.head.weight", ("vocab", "hidden"), "bf16", "mtp"),
]

KIND_DTYPE = {"bf16": "BF16", "fp32": "F32"}


def _expand(
    cfg: ModelConfig,
    rows: list[Row],
    layer: int | None = None,
    expert: int | None = None,
    optional: bool = False,
) -> Iterator[TensorSpec]:
    dims = cfg.dims
    block = cfg.fp8_block
    for template, dim_names, kind, component in rows:
        name = template.format(L=layer, E=expert)
        shape = tuple(dims[d] for d in dim_names)
        if kind != "linear":
            yield TensorSpec(name, KIND_DTYPE[kind], shape, component, layer, expert, optional)
            continue
        yield TensorSpec(name, "F8_E4M3" if block else "BF16", shape, component, layer, expert)
        if block:
            scale_shape = (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
            yield TensorSpec(
                f"{name}_scale_inv", "F32", scale_shape, "scale", layer, expert, scale_for=name
            )


def _decoder_layer(cfg: ModelConfig, layer: int, experts: bool = True) -> Iterator[TensorSpec]:
    yield from _expand(cfg, LAYER_NORMS, layer)
    yield from _expand(cfg, ATTENTION_Q_LORA if cfg.q_lora_rank else ATTENTION_Q_FULL, layer)
    yield from _expand(cfg, ATTENTION_KV, layer)
    yield from _expand(cfg, ROTARY, layer, optional=True)
    if not cfg.is_moe_layer(layer):
        yield from _expand(cfg, DENSE_MLP, layer)
        return
    yield from _expand(cfg, ROUTER, layer)
    if cfg.topk_method == "noaux_tc":
        yield from _expand(cfg, ROUTER_BIAS, layer)
    if cfg.n_shared_experts:
        yield from _expand(cfg, SHARED_EXPERT, layer)
    for expert in range(cfg.n_routed_experts if experts else 0):
        yield from _expand(cfg, EXPERT, layer, expert)


def tensors(cfg: ModelConfig) -> Iterator[TensorSpec]:
    """Every tensor a checkpoint for `cfg` holds, in checkpoint order, lazily.

    >>> sum(1 for _ in tensors(cfg))  # doctest: +SKIP
    """
    yield from _expand(cfg, GLOBAL[:1])
    for layer in range(cfg.num_hidden_layers):
        yield from _decoder_layer(cfg, layer)
    for layer in range(cfg.num_hidden_layers, cfg.num_hidden_layers + cfg.num_nextn_predict_layers):
        yield from _decoder_layer(cfg, layer)
        yield from _expand(cfg, MTP_EXTRA, layer)
    yield from _expand(cfg, GLOBAL[1:] if not cfg.tie_word_embeddings else GLOBAL[1:2])


def groups(cfg: ModelConfig) -> Iterator[tuple[int, list[TensorSpec]]]:
    """`tensors(cfg)` as (count, representative tensors): one dense and one MoE layer (without
    its routed experts) stand for all of their kind, one expert for all experts.

    >>> sum(n * len(specs) for n, specs in groups(cfg)) == sum(1 for _ in tensors(cfg))  # doctest: +SKIP
    True
    """  # noqa: E501
    yield 1, list(_expand(cfg, GLOBAL[:1]))
    main, mtp = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
    for start, stop in ((0, main), (main, main + mtp)):
        moe = cfg.moe_layers_between(start, stop)
        for count, is_moe in ((stop - start - moe, False), (moe, True)):
            layer = cfg.first_layer(start, stop, is_moe)
            if not count or layer is None:
                continue
            specs = list(_decoder_layer(cfg, layer, experts=False))
            if start == main:
                specs += _expand(cfg, MTP_EXTRA, layer)
            yield count, specs
            if is_moe:
                yield count * cfg.n_routed_experts, list(_expand(cfg, EXPERT, layer, 0))
    yield 1, list(_expand(cfg, GLOBAL[1:] if not cfg.tie_word_embeddings else GLOBAL[1:2]))


DEEPSEEK_V3 = register(
    Architecture(
        name="deepseek_v3",
        hf_architectures=("DeepseekV3ForCausalLM",),
        # kimi_k2 is Moonshot's model_type for the same architecture: an alias, not a copy.
        model_types=("deepseek_v3", "kimi_k2"),
        tensors=tensors,
        groups=groups,
    )
)
