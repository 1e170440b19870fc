"""convert/metadata.py: config changes, generation settings, tokenizer, template, KV cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from k2trt import __version__
from k2trt.chat.template import builtin_template
from k2trt.chat.tokenizer import KimiTokenizer
from k2trt.convert.metadata import (
    ConfigChange,
    generation_config,
    hf_quant_config,
    normalize_config,
    write_metadata,
)
from k2trt.errors import K2Error
from k2trt.models import ModelConfig
from k2trt.synth.checkpoint import write_checkpoint
from k2trt.synth.presets import SynthOptions

AUTO_MAP = {
    "AutoConfig": "configuration_deepseek.DeepseekV3Config",
    "AutoModel": "modeling_deepseek.DeepseekV3Model",
    "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
}
QUANT = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}
DROP_AUTO_MAP = ConfigChange(
    "auto_map",
    AUTO_MAP,
    None,
    "remote code is never executed; TensorRT-LLM knows DeepseekV3ForCausalLM",
)
DROP_QUANT = ConfigChange(
    "quantization_config",
    QUANT,
    None,
    "weights are written as bfloat16; with it TensorRT-LLM would build FP8 block-scale layers",
)
BASE_FILES = [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "tiktoken.model",
    "tokenizer",  # the same tokenizer files again, beside no config.json
    "tokenizer.json",
    "tokenizer_config.json",
]
FP8_KV = {
    "producer": {"name": "k2trt", "version": __version__},
    "quantization": {
        "exclude_modules": ["*kv_b_proj*", "*k_b_proj*", "*eh_proj"],
        "group_size": 128,
        "kv_cache_quant_algo": "FP8",
        "quant_algo": "FP8_BLOCK_SCALES",
    },
}
BF16_KV = {
    "producer": {"name": "k2trt", "version": __version__},
    "quantization": {"kv_cache_quant_algo": "FP8", "quant_algo": None},
}
# No added-token strings: HF fast tokenizers match those inside text (see chat/hf_export.py).
SAMPLE = "Hello, world! 你好 ünïcode  spaces\n\ttabs 12345 çà 🙂"


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny source checkpoint; read-only (copy it before changing anything)."""
    path = tmp_path_factory.mktemp("meta") / "src"
    write_checkpoint(path, SynthOptions(preset="tiny"))
    return path


@pytest.fixture(scope="module")
def raw(src: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((src / "config.json").read_text())
    return data


@pytest.fixture(scope="module")
def tok(src: Path) -> KimiTokenizer:
    return KimiTokenizer.from_dir(src)


def read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def copy_src(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "src-copy"
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# normalize_config


def test_fp8_changes_exact(raw: dict[str, Any]) -> None:
    config, changes = normalize_config(raw, dtype="fp8")
    assert changes == [DROP_AUTO_MAP]
    assert config == {k: v for k, v in raw.items() if k != "auto_map"}
    assert config["model_type"] == "kimi_k2"  # engines key Kimi behaviour on it
    assert config["quantization_config"] == QUANT
    assert config["architectures"] == ["DeepseekV3ForCausalLM"]
    assert ModelConfig.from_dict(config).fp8_block == (128, 128)
    assert "auto_map" in raw  # the input is not modified


def test_bf16_changes_exact(raw: dict[str, Any]) -> None:
    config, changes = normalize_config(raw, dtype="bf16")
    # The published torch_dtype is already bfloat16: a no-op is not a change.
    assert raw["torch_dtype"] == "bfloat16"
    assert changes == [DROP_AUTO_MAP, DROP_QUANT]
    assert "quantization_config" not in config
    assert config["torch_dtype"] == "bfloat16"
    parsed = ModelConfig.from_dict(config)
    assert parsed.quantization_config is None and parsed.fp8_block is None


def test_bf16_sets_dtype_keys_that_differ(raw: dict[str, Any]) -> None:
    config, changes = normalize_config(
        {**raw, "torch_dtype": "float16", "dtype": "float32"}, dtype="bf16"
    )
    why = "every weight is bfloat16 after dequantization"
    assert changes[-2:] == [
        ConfigChange("torch_dtype", "float16", "bfloat16", why),
        ConfigChange("dtype", "float32", "bfloat16", why),
    ]
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"


def test_overrides_recorded_in_field_order(raw: dict[str, Any]) -> None:
    overrides = {
        "num_hidden_layers": (2, "slice: first 2 layers"),
        "n_routed_experts": (4, "slice: 4 of 8 experts"),
        "num_experts_per_tok": (2, "already 2: not a change"),
    }
    config, changes = normalize_config(raw, dtype="fp8", overrides=overrides)
    assert changes == [
        DROP_AUTO_MAP,
        ConfigChange("n_routed_experts", 8, 4, "slice: 4 of 8 experts"),
        ConfigChange("num_hidden_layers", 3, 2, "slice: first 2 layers"),
    ]
    assert (config["num_hidden_layers"], config["n_routed_experts"]) == (2, 4)
    assert ModelConfig.from_dict(config).num_hidden_layers == 2


def test_missing_fields_are_pinned_to_our_defaults(raw: dict[str, Any]) -> None:
    gone = ("num_nextn_predict_layers", "n_group", "topk_group", "num_key_value_heads")
    config, changes = normalize_config({k: v for k, v in raw.items() if k not in gone})
    src = "tensorrt_llm/_torch/configs/deepseek_v3.py"
    why = "absent: TensorRT-LLM's DeepseekV3Config ({}) would default it to {}"
    assert changes[1:] == [
        ConfigChange("num_nextn_predict_layers", None, 0, why.format(src, 1)),
        ConfigChange("n_group", None, 1, why.format(src, 8)),
        ConfigChange("topk_group", None, 1, why.format(src, 4)),
        ConfigChange("num_key_value_heads", None, 4, why.format(src, 128)),
    ]
    assert [config[k] for k in gone] == [0, 1, 1, raw["num_attention_heads"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "int4"}, "dtype must be one of fp8, bf16"),
        ({"overrides": {"num_hidden_layers": 2}}, "must be (value, why)"),
        ({"overrides": {"num_hidden_layers": (2, " ")}}, "needs a reason"),
        ({"overrides": {"auto_map": ({}, "x")}}, "not overridable"),
        (
            {"overrides": {"num_hidden_layers": (0, "zero")}},
            "'num_hidden_layers' must be at least 1",
        ),
    ],
)
def test_bad_arguments(raw: dict[str, Any], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(K2Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        normalize_config(raw, **kwargs)


def test_fp8_needs_a_128_block_fp8_source(raw: dict[str, Any]) -> None:
    plain = {k: v for k, v in raw.items() if k != "quantization_config"}
    with pytest.raises(K2Error, match="dtype fp8 needs a block-FP8 source") as err:
        normalize_config(plain, path="ckpt/config.json")
    assert str(err.value).startswith("ckpt/config.json: quantization_config")
    normalize_config(plain, dtype="bf16")  # a bf16 source is fine for a bf16 output
    odd = {**raw, "quantization_config": {**QUANT, "weight_block_size": [64, 64]}}
    with pytest.raises(K2Error, match=r"weight_block_size must be \[128, 128\]"):
        normalize_config(odd)


# ---------------------------------------------------------------------------------------------
# generation_config / hf_quant_config


def test_generation_config_merges() -> None:
    config = {"eos_token_id": [9, 7], "bos_token_id": 1, "max_position_embeddings": 64}
    source = {"eos_token_id": 3, "max_length": 32, "top_p": 0.95}
    assert generation_config(source, config, 7) == {
        "eos_token_id": [7, 9],
        "max_length": 32,
        "top_p": 0.95,
        "temperature": 0.6,
        "do_sample": True,
        "bos_token_id": 1,
    }


def test_hf_quant_config_keeps_source_exclusions(raw: dict[str, Any]) -> None:
    config = {**raw, "quantization_config": {**QUANT, "modules_to_not_convert": ["lm_head"]}}
    quant = hf_quant_config(config)["quantization"]
    assert quant["exclude_modules"] == ["lm_head", "*kv_b_proj*", "*k_b_proj*", "*eh_proj"]


# ---------------------------------------------------------------------------------------------
# write_metadata


def test_write_fp8(src: Path, tmp_path: Path, tok: KimiTokenizer) -> None:
    out = tmp_path / "out"
    result = write_metadata(src, out)
    assert result.files == BASE_FILES
    assert sorted(p.name for p in out.iterdir()) == BASE_FILES
    assert not list(out.glob("*.py"))
    assert read(out / "config.json") == result.config
    assert result.changes == [DROP_AUTO_MAP]
    assert (out / "tiktoken.model").read_bytes() == (src / "tiktoken.model").read_bytes()
    assert read(out / "generation_config.json") == {
        "bos_token_id": tok.bos_id,
        "do_sample": True,
        "eos_token_id": [tok.im_end_id, tok.eos_id],
        "max_length": 131072,
        "temperature": 0.6,
    }
    assert tok.special_ids["<|im_end|>"] == tok.im_end_id == 1282 and tok.eos_id == 1281


def test_write_bf16_with_fp8_kv_cache(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    overrides = {"num_hidden_layers": (2, "slice")}
    result = write_metadata(src, out, dtype="bf16", kv_cache_fp8=True, config_overrides=overrides)
    assert result.files == sorted([*BASE_FILES, "hf_quant_config.json"])
    assert result.changes == [
        DROP_AUTO_MAP,
        DROP_QUANT,
        ConfigChange("num_hidden_layers", 3, 2, "slice"),
    ]
    written = read(out / "config.json")
    assert "quantization_config" not in written and written["num_hidden_layers"] == 2
    assert ModelConfig.from_dict(written).fp8_block is None
    assert read(out / "hf_quant_config.json") == BF16_KV


def test_write_fp8_with_fp8_kv_cache(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = write_metadata(src, out, kv_cache_fp8=True)
    assert "hf_quant_config.json" in result.files
    assert read(out / "hf_quant_config.json") == FP8_KV
    # TensorRT-LLM reads hf_quant_config.json instead of quantization_config: they must agree.
    assert read(out / "config.json")["quantization_config"]["weight_block_size"] == [128, 128]


def test_exported_tokenizer_matches_ours(src: Path, tmp_path: Path, tok: KimiTokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    write_metadata(src, out)
    # tokenizer/ has no config.json, so transformers 5.x does not trip over model_type kimi_k2
    hf = transformers.AutoTokenizer.from_pretrained(str(out / "tokenizer"), trust_remote_code=False)
    assert hf(SAMPLE, add_special_tokens=False)["input_ids"] == tok.encode(SAMPLE)
    assert hf.chat_template == (out / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / "tokenizer" / name).read_bytes() == (out / name).read_bytes()
    assert "auto_map" not in read(out / "tokenizer_config.json")


def test_chat_template_pinned_from_tokenizer_config(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = write_metadata(src, out)
    source_text = read(src / "tokenizer_config.json")["chat_template"]
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == source_text
    assert read(out / "tokenizer_config.json")["chat_template"] == source_text
    assert result.chat_template["name"] == "kimi-k2-instruct-0711-tools"  # synth's 0711 default
    assert result.chat_template["source"] == str(src / "tokenizer_config.json")
    assert len(result.chat_template["sha256"]) == 64


def test_chat_template_jinja_wins_over_config(src: Path, tmp_path: Path) -> None:
    ckpt = copy_src(src, tmp_path)
    # Recognised by what it renders, so a copy with its own comment is still that revision.
    text = "{# pinned by ops #}\n" + builtin_template("kimi-k2-instruct-0905")
    (ckpt / "chat_template.jinja").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    result = write_metadata(ckpt, out)
    assert result.chat_template["name"] == "kimi-k2-instruct-0905"
    assert result.chat_template["source"] == str(ckpt / "chat_template.jinja")
    assert read(out / "tokenizer_config.json")["chat_template"] == text
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == text


def test_changed_chat_template_is_custom(src: Path, tmp_path: Path) -> None:
    ckpt = copy_src(src, tmp_path)
    text = builtin_template("kimi-k2-instruct-0905").replace("Moonshot AI.", "us.")
    (ckpt / "chat_template.jinja").write_text(text, encoding="utf-8")
    assert write_metadata(ckpt, tmp_path / "out").chat_template["name"] == "custom"


def test_without_generation_config(src: Path, tmp_path: Path, tok: KimiTokenizer) -> None:
    ckpt = copy_src(src, tmp_path)
    (ckpt / "generation_config.json").unlink()
    write_metadata(ckpt, tmp_path / "out")
    gen = read(tmp_path / "out" / "generation_config.json")
    assert gen["eos_token_id"] == [tok.im_end_id, tok.eos_id]
    assert (gen["bos_token_id"], gen["max_length"]) == (tok.bos_id, 131072)


@pytest.mark.parametrize("name", ["tiktoken.model", "tokenizer_config.json"])
def test_missing_tokenizer_file(src: Path, tmp_path: Path, name: str) -> None:
    ckpt = copy_src(src, tmp_path)
    (ckpt / name).unlink()
    with pytest.raises(K2Error) as err:
        write_metadata(ckpt, tmp_path / "out")
    assert err.value.path == str(ckpt / name)
    assert "missing" in str(err.value)
