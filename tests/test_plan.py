"""`k2trt plan`: per-GPU weight arithmetic by hand, the MLA KV formula, bad input, and the
published deployment facts for Kimi K2 and DeepSeek-V3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from k2trt.build.gpus import CATALOG, GIB, MIB, parse_gpus
from k2trt.build.planner import (
    Layout,
    Reserves,
    activation_per_token,
    kv_bytes_per_token_per_layer,
    make_layout,
    plan,
    stage_sizes,
)
from k2trt.cli.plan import command
from k2trt.errors import K2Error
from k2trt.models.config import ModelConfig
from k2trt.models.kimi_k2 import deepseek_v3_config, kimi_k2_config
from k2trt.output import OUTPUT

K128 = 131072

# Small enough to do by hand: every sharded dimension a multiple of 128 (whole FP8 blocks).
TINY: dict[str, Any] = {
    "model_type": "deepseek_v3",
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 128,
    "kv_lora_rank": 128,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 32,
    "v_head_dim": 32,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "max_position_embeddings": 4096,
    "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
}

# Per-tensor bytes of TINY, by hand (FP8 = 1 B/element, block scales F32 = 4 B each):
EMBED = 1024 * 256 * 2  # 524,288, bf16; lm_head the same
NORMS_PER_LAYER = (256 + 256 + 128 + 128) * 2  # input/post norms, q_a and kv_a norms: 1,536
Q_A = 128 * 256 + 1 * 2 * 4  # 32,776 (replicated: fused with kv_a)
KV_A = 160 * 256 + 2 * 2 * 4  # 40,976: 160 rows = two row blocks, the second partial
Q_B = 256 * 128 + 2 * 1 * 4  # 32,776 (split by heads)
O_PROJ = 256 * 128 + 2 * 1 * 4  # 32,776 (split by heads)
KV_B = (256 * 128 + 4 * 32 * 128) * 2  # 98,304: bf16 after dequant + the k_nope copy
DENSE = 3 * (512 * 256 + 4 * 2 * 4)  # 393,312 (layer 0)
ROUTER = 8 * 256 * 2 + 8 * 4  # 4,128: bf16 gate + fp32 correction bias
SHARED = 3 * (256 * 256 + 2 * 2 * 4)  # 196,656 per MoE layer
EXPERT = 3 * (256 * 256 + 2 * 2 * 4)  # 196,656 per expert

NO_RESERVES = Reserves(
    max_num_tokens=0,
    runtime_bytes=0,
    cuda_graph_bytes=0,
    cuda_graph_batch=0,
    kv_fraction=1.0,
    tokens_per_block=1,
)


def tiny() -> ModelConfig:
    return ModelConfig.from_dict(TINY)


def kimi() -> ModelConfig:
    return ModelConfig.from_dict(kimi_k2_config("0711"))


def small() -> ModelConfig:
    """The `small` synth preset's config (1,536-row vocabulary, as synth writes it)."""
    from k2trt.synth.presets import SynthOptions, synth_config

    return ModelConfig.from_dict(synth_config(SynthOptions(preset="small"), 1536, 1, 2))


def deepseek_v3() -> ModelConfig:
    """DeepSeek-V3's published config: same family, its own sizes (671B, one MTP layer)."""
    return ModelConfig.from_dict(deepseek_v3_config())


# ---- exact arithmetic on the tiny config ----


def test_tp4_ep4_weights_per_gpu_by_hand() -> None:
    report = plan(tiny(), parse_gpus("1GiBx4"), 1024, 1, "fp8", Layout(tp=4, ep=4))
    (p,) = report.layouts
    # dense TP = gcd(512/128, 4) = 4; shared-expert TP = gcd(256/128, 4) = 2
    assert (p.dense_tp, p.shared_tp) == (4, 2)
    assert p.stages[0].weights == {
        "embedding": EMBED,  # whole on every rank
        "lm_head": EMBED // 4,  # 1024 / 4 vocabulary rows
        "attention": 3 * (Q_A + KV_A + (Q_B + O_PROJ) // 4),  # 270,420
        "attention_kv_b": 3 * KV_B // 4,  # 73,728
        "dense_mlp": DENSE // 4,  # 98,328
        "shared_expert": 2 * SHARED // 2,  # 196,656
        "experts": 2 * 8 * EXPERT // 4,  # two experts per rank in two layers: 786,624
        "router": 2 * ROUTER,  # 8,256
        "norm": 3 * NORMS_PER_LAYER + 512,  # + model.norm: 5,120
        "mtp": 0,
    }
    assert p.stages[0].weights_total == 2_094_492


def test_attention_dp_replicates_attention_dense_shared_and_lm_head() -> None:
    report = plan(tiny(), parse_gpus("1GiBx4"), 1024, 1, "fp8", Layout(4, ep=4, attention_dp=True))
    (p,) = report.layouts
    w = p.stages[0].weights
    assert (p.dense_tp, p.shared_tp) == (1, 1)
    assert w["attention"] == 3 * (Q_A + KV_A + Q_B + O_PROJ)
    assert (w["attention_kv_b"], w["dense_mlp"], w["shared_expert"]) == (
        3 * KV_B,
        DENSE,
        2 * SHARED,
    )
    assert (w["lm_head"], w["experts"]) == (EMBED, 2 * 8 * EXPERT // 4)


def test_pipeline_stages_split_layers_embedding_first_lm_head_last() -> None:
    report = plan(tiny(), parse_gpus("1GiBx3"), 1024, 1, "fp8", Layout(tp=1, pp=3))
    first, middle, last = (s.weights for s in report.layouts[0].stages)
    attention = Q_A + KV_A + Q_B + O_PROJ
    moe_layer = ROUTER + SHARED + 8 * EXPERT + attention + KV_B + NORMS_PER_LAYER
    assert sum(first.values()) == EMBED + NORMS_PER_LAYER + attention + KV_B + DENSE
    assert sum(middle.values()) == moe_layer
    assert sum(last.values()) == moe_layer + EMBED + 512  # lm_head and model.norm
    assert stage_sizes(61, 8) == [8, 8, 8, 8, 8, 7, 7, 7]  # torch.tensor_split, as TRT-LLM


def test_kv_per_token_is_the_mla_latent_replicated_under_tp() -> None:
    assert kv_bytes_per_token_per_layer(tiny(), "fp8") == 128 + 32
    assert kv_bytes_per_token_per_layer(tiny(), "bf16") == 2 * (128 + 32)
    assert kv_bytes_per_token_per_layer(kimi(), "fp8") == 576  # 512 + 64
    one_gib = parse_gpus("1GiBx4")
    tp = plan(tiny(), one_gib, 1024, 1, "fp8", Layout(4, ep=4), reserves=NO_RESERVES)
    (p,) = tp.layouts
    assert tp.kv_bytes_per_token == 3 * 160
    # Every TP rank holds the whole latent of every request: cluster tokens = one GPU's.
    assert p.kv_tokens_per_rank == p.kv_tokens_total == (GIB - 2_094_492) // 480 == 2_232_598
    adp = plan(tiny(), one_gib, 1024, 1, "fp8", Layout(4, 1, 4, True), reserves=NO_RESERVES)
    (q,) = adp.layouts
    assert q.kv_tokens_total == 4 * q.kv_tokens_per_rank  # each DP rank its own requests
    assert q.sequences == 4 * (q.kv_tokens_per_rank // 1024)


def test_activation_per_token_by_hand() -> None:
    # 8 bf16 hidden buffers (4,096) + 1 local head x (2 x 64 + 32) x 2 B (320) + MoE: 2 routes
    # x (256 fp8 in + 2 x 256 x 2 B gate/up + 256 fp8 act + 256 x 2 B down) / EP 4 = 1,024
    # (larger than the dense MLP's 2 x 128 x 2 + 128 = 640 at dense TP 4)
    assert activation_per_token(tiny(), Layout(4, ep=4), 4, Reserves()) == 4096 + 320 + 1024


def test_enumeration_respects_heads_experts_and_layers() -> None:
    labels = [p.layout.label for p in plan(tiny(), parse_gpus("H200x4"), 1024, 1).layouts]
    assert "TP4 EP4" in labels and "ADP4 EP4" in labels and "TP4 EP1 MoE-TP4" not in labels
    # 3 layers: PP2 splits them 2 + 1 (torch.tensor_split, as TensorRT-LLM); PP4 has no room
    assert any("PP2" in label for label in labels)
    assert not any("PP4" in label for label in labels)
    assert len(labels) == len(set(labels))


# ---- bad input: one line naming the option and the numbers ----


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        ("A100x8", "--gpus: unknown GPU 'A100' (known: B200, GB200, H100, H20, H200"),
        ("H200", "--gpus: expected NAMExCOUNT"),
        ("H200x0", "--gpus: the GPU count must be 1..4096, got 0"),
        ("80XBx8", "--gpus: unknown GPU '80XB'"),
    ],
)
def test_bad_gpus(gpus: str, message: str) -> None:
    with pytest.raises(K2Error) as info:
        parse_gpus(gpus)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_gpu_catalog_and_custom_sizes() -> None:
    assert parse_gpus("h200x16").gpu is CATALOG["H200"] and parse_gpus("H20x16").gpu.name == "H20"
    assert parse_gpus("80GBx8").gpu.memory_bytes == 80 * 10**9
    assert parse_gpus("custom:96GiBx16").gpu.memory_bytes == 96 * GIB
    assert CATALOG["H100"].memory_bytes == 81559 * MIB
    gens = {name: (g.generation, g.fp8) for name, g in CATALOG.items()}
    assert gens["B200"] == gens["GB200"] == ("blackwell", True)
    assert gens["H100"] == gens["H200"] == gens["H20"] == ("hopper", True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tp": 48, "ep": 48}, "--tp 48 does not divide num_attention_heads 64"),
        ({"tp": 8, "ep": 8}, "--tp 8 x --pp 1 = 8 GPUs, but --gpus H200x48 has 48"),
        ({"tp": 48, "ep": 48, "attention_dp": True}, None),
        ({"tp": 48, "ep": 7, "attention_dp": True}, "--ep 7 does not divide --tp 48"),
        ({"tp": 48, "ep": 3, "attention_dp": True}, None),
        ({"tp": 48, "ep": 1, "attention_dp": True}, "MoE-TP 48 (--tp 48 / --ep 1)"),
        ({"tp": 0}, "--tp must be at least 1, got 0"),
    ],
)
def test_bad_layouts(kwargs: dict[str, Any], message: str | None) -> None:
    gpus = parse_gpus("H200x48")
    if message is None:
        assert make_layout(kimi(), gpus, **kwargs).world == 48
        return
    with pytest.raises(K2Error) as info:
        make_layout(kimi(), gpus, **kwargs)
    assert message in str(info.value)


def test_ep_not_dividing_experts() -> None:
    with pytest.raises(K2Error, match="--ep 6 does not divide n_routed_experts 8"):
        make_layout(tiny(), parse_gpus("H200x6"), tp=6, ep=6, attention_dp=True)


@pytest.mark.parametrize(
    ("context", "concurrency", "kv", "message"),
    [
        (0, 1, "fp8", "--context must be at least 1, got 0"),
        (-5, 1, "fp8", "--context must be at least 1, got -5"),
        (8192, 1, "fp8", "--context 8192 exceeds max_position_embeddings 4096"),
        (1024, 0, "fp8", "--concurrency must be at least 1, got 0"),
        (1024, 1, "int4", "--kv-dtype must be fp8 or bf16, got 'int4'"),
    ],
)
def test_bad_request(context: int, concurrency: int, kv: str, message: str) -> None:
    with pytest.raises(K2Error) as info:
        plan(tiny(), parse_gpus("H200x4"), context, concurrency, kv)
    assert message in str(info.value)


# ---- published facts ----


def test_8x_h100_cannot_hold_kimi_k2_in_any_layout() -> None:
    report = plan(kimi(), parse_gpus("H100x8"), K128, 1)
    assert report.layouts and not any(p.weights_fit for p in report.layouts)
    # Even the leanest layout needs more than an H100 has for weights alone.
    lightest = min(p.binding.weights_total for p in report.layouts)
    assert lightest > CATALOG["H100"].memory_bytes * 1.4


def test_8x_h200_holds_kimi_k2_with_little_kv_room() -> None:
    report = plan(kimi(), parse_gpus("H200x8"), K128, 1)
    (best,) = [p for p in report.layouts if p.layout == Layout(tp=8, ep=8)]
    assert report.ok and best.request_fit
    # without PP, TP8 EP8 is the best layout
    flat = [p for p in report.layouts if p.layout.pp == 1]
    assert flat[0] is best
    # 122.9 GiB of weights per GPU leave ~339K tokens (fp8 KV, replicated over TP): about
    # 2.6 sequences of 128K, against the 1M tokens of 8 concurrent ones.
    assert 300_000 < best.kv_tokens_total < 400_000 < 4 * K128
    assert best.sequences == 2


def test_moonshot_16_gpu_minimum_for_128k_on_h200_and_h20() -> None:
    # The claim names no concurrency; 8 x H200 tops out at 2 full-context sequences (3 even
    # with zero reserves), so any concurrency of 4 or more reproduces it. We ask for 8.
    h200x8 = plan(kimi(), parse_gpus("H200x8"), K128, 8)
    assert not any(p.request_fit for p in h200x8.layouts if p.layout.pp == 1)
    assert not plan(kimi(), parse_gpus("H20x8"), K128, 1).ok  # weights alone do not fit
    h200 = plan(kimi(), parse_gpus("H200x16"), K128, 8)
    h20 = plan(kimi(), parse_gpus("H20x16"), K128, 8)
    assert h200.ok and h20.ok
    assert h20.best is not None and h20.best.layout == Layout(16, ep=16, attention_dp=True)
    zero = Reserves(max_num_tokens=0, runtime_bytes=0, cuda_graph_bytes=0, cuda_graph_batch=0)
    zero_plan = plan(kimi(), parse_gpus("H200x8"), K128, 4, reserves=zero)
    flat_tp = [p for p in zero_plan.layouts if not p.layout.attention_dp and p.layout.pp == 1]
    assert flat_tp and not any(p.request_fit for p in flat_tp)


def test_pipeline_parallel_is_the_caveat_to_the_16_gpu_minimum() -> None:
    # 61 layers split unevenly over 8 stages (8 x 8 - 3, torch.tensor_split as TensorRT-LLM);
    # PP8 stores each layer's latent once instead of 8 times, so by memory it serves what no
    # PP1 layout can, and the automatic enumeration finds it.
    cfg, gpus = kimi(), parse_gpus("H200x8")
    report = plan(cfg, gpus, K128, 8, layout=make_layout(cfg, gpus, tp=1, pp=8))
    assert report.ok and report.layouts[0].sequences >= 8
    auto = plan(cfg, gpus, K128, 8)
    assert auto.ok and auto.best is not None and auto.best.layout.pp > 1


def test_pipeline_stages_rank_after_layouts_without_them_that_fit() -> None:
    # small preset on 8 x H200: PP layouts hold a hair more KV (smaller per-stage weights)
    # than ADP8 EP8, but a layout without PP that fits ranks first.
    report = plan(small(), parse_gpus("H200x8"), K128, 1)
    assert report.best is not None and report.best.layout == Layout(8, ep=8, attention_dp=True)
    assert report.best.kv_tokens_total < max(p.kv_tokens_total for p in report.layouts)
    pps = [p.layout.pp for p in report.layouts]
    assert pps == sorted(pps)  # everything fits: fewer stages first, KV within a PP size


def test_deepseek_v3_fits_8x_h200() -> None:
    cfg = deepseek_v3()
    report = plan(cfg, parse_gpus("H200x8"), K128, 8)
    assert (
        report.ok and report.loaded_bytes < plan(kimi(), parse_gpus("H200x8"), K128, 1).loaded_bytes
    )
    with_mtp = plan(cfg, parse_gpus("H200x8"), K128, 8, mtp=True)
    assert with_mtp.ok and with_mtp.loaded_bytes > report.loaded_bytes
    assert with_mtp.kv_bytes_per_token == 62 * 576


# ---- the CLI ----


def _run(tmp_path: Path, *args: str, mode: str = "human") -> Any:
    (tmp_path / "config.json").write_text(json.dumps(kimi_k2_config("0711")))
    app = typer.Typer()
    app.command()(command)
    previous = OUTPUT.mode
    OUTPUT.mode = mode
    try:
        return CliRunner().invoke(app, [str(tmp_path), *args])
    finally:
        OUTPUT.mode = previous


def test_cli_human_table_and_exit_codes(tmp_path: Path) -> None:
    ok = _run(tmp_path, "--gpus", "H200x16", "--context", "131072", "--concurrency", "8")
    assert ok.exit_code == 0, ok.output
    assert "ADP16 EP16" in ok.output and "weights/GPU" in ok.output and "fit; best" in ok.output
    none = _run(tmp_path, "--gpus", "H100x8")
    assert (
        none.exit_code == 1 and "no layout holds the weights and reserves on H100x8" in none.output
    )


def test_cli_json_and_explicit_layout(tmp_path: Path) -> None:
    result = _run(tmp_path, "--gpus", "H200x8", "--tp", "8", "--ep", "8", mode="json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["ok"] and data["explicit_layout"]
    (layout,) = data["layouts"]
    assert layout["layout"]["label"] == "TP8 EP8" and layout["sequences"] == 2
    assert {r["name"] for r in data["assumptions"]["reserves"]} >= {"kv_fraction", "runtime_bytes"}
    assert data["request"] == {"context": K128, "concurrency": 1, "kv_dtype": "fp8", "mtp": False}
    bad = _run(tmp_path, "--gpus", "H200x8", "--tp", "8", "--concurrency", "8")
    assert bad.exit_code == 1 and "holds 2 sequence(s)" in bad.output


def test_cli_bad_input_raises_one_line_errors(tmp_path: Path) -> None:
    result = _run(tmp_path, "--gpus", "A100x8")
    assert isinstance(result.exception, K2Error) and "unknown GPU 'A100'" in str(result.exception)
    result = _run(tmp_path, "--gpus", "H200x8", "--context", "0")
    assert isinstance(result.exception, K2Error) and "--context must be at least 1" in str(
        result.exception
    )


def test_one_gpu_plans_a_model_whose_experts_are_not_whole_blocks(tmp_path: Path) -> None:
    """An unsplit expert needs no whole 128-wide blocks (the tiny preset's are 160 wide)."""
    from k2trt.build import parse_gpus, plan
    from k2trt.synth.checkpoint import write_checkpoint
    from k2trt.synth.presets import SynthOptions

    write_checkpoint(tmp_path / "tiny", SynthOptions())
    report = plan(ModelConfig.load(tmp_path / "tiny"), parse_gpus("H100x1"), 4096, 1)
    assert report.ok and report.best is not None
    assert (report.best.layout.tp, report.best.layout.ep, report.best.layout.pp) == (1, 1, 1)
