"""`k2trt synth`: Kimi K2's exact on-disk format, deterministic, loadable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from k2trt.checkpoint.reader import Checkpoint
from k2trt.models import ModelConfig
from k2trt.models.deepseek_v3 import DEEPSEEK_V3
from k2trt.models.kimi_k2 import KIMI_K2_0711
from k2trt.synth.checkpoint import REMOTE_CODE_FILES, write_checkpoint
from k2trt.synth.presets import PRESETS, SynthOptions, synth_config


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_same_seed_same_bytes_other_seed_other_weights(tiny_ckpt: Path, tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "a", SynthOptions(seed=0))
    write_checkpoint(tmp_path / "b", SynthOptions(seed=1))
    assert digests(tmp_path / "a") == digests(tiny_ckpt)
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a["config.json"] == b["config.json"]
    assert a["model-1-of-3.safetensors"] != b["model-1-of-3.safetensors"]


def test_config_has_every_real_field(tiny_ckpt: Path) -> None:
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    assert set(cfg) == set(KIMI_K2_0711)
    sized = set(PRESETS["tiny"]) | {"vocab_size", "bos_token_id", "eos_token_id"}
    assert {k: v for k, v in cfg.items() if k not in sized} == {
        k: v for k, v in KIMI_K2_0711.items() if k not in sized
    }
    assert cfg["model_type"] == "kimi_k2"
    assert cfg["rope_scaling"]["factor"] == 32.0 and cfg["rope_scaling"]["beta_fast"] == 1.0


def test_0905_rope_and_padded_shard_names(tiny_0905: Path) -> None:
    cfg = json.loads((tiny_0905 / "config.json").read_text())
    assert (cfg["rope_scaling"]["factor"], cfg["max_position_embeddings"]) == (64.0, 262144)
    index = json.loads((tiny_0905 / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        f"model-0000{i}-of-000004.safetensors" for i in range(1, 5)
    ]
    assert index["weight_map"]["lm_head.weight"] == "model-00004-of-000004.safetensors"


def test_0711_shards_unpadded(tiny_ckpt: Path) -> None:
    index = json.loads((tiny_ckpt / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        f"model-{i}-of-3.safetensors" for i in (1, 2, 3)
    ]
    total = sum(p.stat().st_size for p in tiny_ckpt.glob("*.safetensors"))
    assert index["metadata"]["total_size"] < total  # headers are not counted


def test_every_spec_tensor_with_real_dtypes(tiny_ckpt: Path) -> None:
    with Checkpoint.open(tiny_ckpt) as ckpt:
        specs = list(DEEPSEEK_V3.tensors(ckpt.config))
        assert sorted(s.name for s in specs) == ckpt.names()  # index keys sorted, as HF writes
        got = {name: (i.dtype, i.shape) for name, i in ckpt.infos.items()}
    assert got == {s.name: (s.dtype, s.shape) for s in specs}
    dtypes = {s.component: s.dtype for s in specs if s.component != "norm"}
    assert dtypes["experts"] == dtypes["attention"] == dtypes["dense_mlp"] == "F8_E4M3"
    assert dtypes["embedding"] == dtypes["lm_head"] == "BF16"
    assert got["model.layers.1.mlp.gate.weight"][0] == "BF16"
    assert got["model.layers.1.mlp.gate.e_score_correction_bias"][0] == "F32"
    assert got["model.layers.0.self_attn.rotary_emb.inv_freq"] == ("F32", (8,))
    # a dimension that is not a multiple of 128, with a partial last scale block
    assert got["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"][1] == (144, 256)
    assert got["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"][1] == (2, 2)


def test_safetensors_library_reads_our_shards_identically(tiny_ckpt: Path) -> None:
    with Checkpoint.open(tiny_ckpt) as ckpt:
        for shard in ckpt.shard_paths:
            with safe_open(str(shard), "pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    ours = ckpt.tensor(key).torch()
                    theirs = f.get_tensor(key)
                    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
                    assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8))


def test_remote_code_files_are_traps(tiny_ckpt: Path) -> None:
    for name in REMOTE_CODE_FILES:
        with pytest.raises(RuntimeError, match="code from a checkpoint was executed"):
            exec(compile((tiny_ckpt / name).read_text(), name, "exec"), {})


def test_k2_slice_keeps_real_hidden_sizes() -> None:
    cfg = ModelConfig.from_dict(synth_config(SynthOptions(preset="k2-slice"), 1536, 1280, 1281))
    assert (cfg.hidden_size, cfg.moe_intermediate_size, cfg.intermediate_size) == (
        7168,
        2048,
        18432,
    )
    assert (cfg.q_lora_rank, cfg.kv_lora_rank, cfg.num_attention_heads) == (1536, 512, 64)
    assert (cfg.num_hidden_layers, cfg.n_routed_experts, cfg.num_experts_per_tok) == (4, 8, 8)
    # The real vocabulary's rows (the tokenizer's 1536 ids, then padding), so benches hold the
    # real 2.35 GB BF16 embedding and lm_head.
    assert cfg.vocab_size == 163_840 == KIMI_K2_0711["vocab_size"]
    assert synth_config(SynthOptions(preset="tiny"), 1536, 1280, 1281)["vocab_size"] == 1536


def test_layers_and_experts_override_and_clip_top_k() -> None:
    cfg = synth_config(SynthOptions(preset="tiny", layers=5, experts=1), 1536, 1280, 1281)
    assert (cfg["num_hidden_layers"], cfg["n_routed_experts"], cfg["num_experts_per_tok"]) == (
        5,
        1,
        1,
    )


def test_existing_output_refused_without_force(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep").write_text("mine")
    from k2trt.errors import K2Error

    with pytest.raises(K2Error, match="already exists"):
        write_checkpoint(out, SynthOptions())
    assert [p.name for p in out.iterdir()] == ["keep"]
    write_checkpoint(out, SynthOptions(), force=True)
    assert digests(out) == digests(tiny_ckpt)
    assert not list(tmp_path.glob(".*"))  # no temp leftovers


def test_small_preset_inspects_clean(tmp_path: Path) -> None:
    from k2trt.checkpoint.inspection import InspectOptions, inspect_checkpoint

    write_checkpoint(tmp_path / "s", SynthOptions(preset="small", layers=2, seed=3))
    report = inspect_checkpoint(tmp_path / "s", InspectOptions(deep=True))
    assert report.findings == []
    # per layer 15 (norms, 5 attention linears + scales, 2 MLA norms, inv_freq); dense MLP 6;
    # MoE router 2 + shared 6 + 16 experts x 6; embed, norm, lm_head
    assert report.tensors == report.params.tensors == 2 * 15 + 6 + (2 + 6 + 16 * 6) + 3
    # scales: small has 704-wide experts (5.5 blocks), so edge blocks are partial
    with Checkpoint.open(tmp_path / "s") as ckpt:
        scale = ckpt.tensor("model.layers.1.mlp.experts.0.down_proj.weight_scale_inv")
        assert scale.shape == (8, 6)


def test_0905_inspects_clean(tiny_0905: Path) -> None:
    from k2trt.checkpoint.inspection import inspect_checkpoint

    report = inspect_checkpoint(tiny_0905)
    assert (report.findings, report.release, report.shards) == ([], "0905", 4)
