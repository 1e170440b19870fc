"""Architecture spec and parameter math against published figures."""

from __future__ import annotations

import copy
from math import ceil

import pytest

from k2trt.errors import K2Error
from k2trt.models import ModelConfig, architecture_for
from k2trt.models.deepseek_v3 import DEEPSEEK_V3
from k2trt.models.kimi_k2 import KIMI_K2_0711, deepseek_v3_config, kimi_k2_config, release_of
from k2trt.models.params import count_params

# Published for Kimi-K2-Instruct (0711): every stored element, in this many tensors.
KIMI_PUBLISHED_PARAMS = 1_026_470_731_056
KIMI_PUBLISHED_TENSORS = 139_644


def kimi() -> ModelConfig:
    return ModelConfig.from_dict(kimi_k2_config("0711"))


def test_kimi_total_matches_published_within_001_percent() -> None:
    counts = count_params(kimi())
    assert abs(counts.stored - KIMI_PUBLISHED_PARAMS) / KIMI_PUBLISHED_PARAMS < 1e-4
    assert counts.tensors == KIMI_PUBLISHED_TENSORS


def test_kimi_activated_is_about_32_9b() -> None:
    counts = count_params(kimi())
    assert round(counts.activated / 1e9, 1) == 32.9
    # activated = all weights minus the 376 idle experts (3 matrices 7168x2048) in 60 MoE layers
    assert counts.weights - counts.activated == 60 * (384 - 8) * 3 * 7168 * 2048


def test_kimi_bytes_match_published_size() -> None:
    assert round(count_params(kimi()).total_bytes / 2**30, 1) == 958.5


def test_stored_is_weights_plus_scales_plus_rotary() -> None:
    c = count_params(kimi())
    assert c.stored == c.weights + c.scales + c.rotary
    assert c.rotary == 61 * 32  # one inv_freq of qk_rope_head_dim/2 per layer


def test_kimi_is_an_alias_of_deepseek_v3() -> None:
    assert architecture_for(kimi()) is DEEPSEEK_V3
    ds = copy.deepcopy(KIMI_K2_0711) | {"model_type": "deepseek_v3"}
    assert architecture_for(ModelConfig.from_dict(ds)) is DEEPSEEK_V3


def test_deepseek_v3_with_mtp_layer_counts() -> None:
    raw = deepseek_v3_config()
    counts = count_params(ModelConfig.from_dict(raw))
    # DeepSeek-V3 card: 671B main + 14B MTP = 685B on the Hub, 37B activated.
    assert round(counts.stored / 1e9) == 685
    assert round(counts.activated / 1e9) in (37, 38)


def test_kimi_tensor_shapes_and_dtypes() -> None:
    specs = {s.name: s for s in DEEPSEEK_V3.tensors(kimi())}
    kv_a = "model.layers.5.self_attn.kv_a_proj_with_mqa.weight"
    assert (specs[kv_a].dtype, specs[kv_a].shape) == ("F8_E4M3", (576, 7168))
    assert specs[kv_a + "_scale_inv"].shape == (ceil(576 / 128), 56) == (5, 56)
    assert specs["model.layers.1.mlp.experts.383.down_proj.weight"].shape == (7168, 2048)
    assert "model.layers.1.mlp.experts.384.down_proj.weight" not in specs
    assert specs["model.layers.0.mlp.gate_proj.weight"].shape == (18432, 7168)
    assert "model.layers.0.mlp.gate.weight" not in specs  # layer 0 is dense
    assert specs["model.layers.60.mlp.gate.weight"].dtype == "BF16"
    assert specs["model.layers.60.mlp.gate.e_score_correction_bias"].dtype == "F32"
    assert specs["model.layers.3.self_attn.q_b_proj.weight"].shape == (12288, 1536)
    assert specs["model.layers.3.self_attn.kv_b_proj.weight"].shape == (16384, 512)
    assert specs["model.layers.3.self_attn.o_proj.weight"].shape == (7168, 8192)
    assert specs["model.embed_tokens.weight"].dtype == "BF16"
    assert specs["model.layers.3.self_attn.rotary_emb.inv_freq"].optional


def test_unquantized_config_has_bf16_linears_and_no_scales() -> None:
    raw = kimi_k2_config()
    del raw["quantization_config"]
    specs = list(DEEPSEEK_V3.tensors(ModelConfig.from_dict(raw)))
    assert not [s for s in specs if s.component == "scale"]
    assert {s.dtype for s in specs} == {"BF16", "F32"}


def test_release_from_rope_factor() -> None:
    assert release_of(ModelConfig.from_dict(kimi_k2_config("0711")).rope_factor) == "0711"
    cfg = ModelConfig.from_dict(kimi_k2_config("0905"))
    assert (release_of(cfg.rope_factor), cfg.max_position_embeddings) == ("0905", 262144)
    assert release_of(10.0) == "unknown"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": None}, "field 'hidden_size' must be int, got None"),
        ({"num_hidden_layers": "61"}, "field 'num_hidden_layers' must be int, got '61'"),
        ({"n_routed_experts": True}, "field 'n_routed_experts' must be int, got True"),
        ({"kv_lora_rank": -1}, "field 'kv_lora_rank' must not be negative, got -1"),
    ],
)
def test_config_field_errors_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(K2Error) as err:
        ModelConfig.from_dict(kimi_k2_config() | change, "ckpt/config.json")
    assert str(err.value) == f"ckpt/config.json: {message}"


def test_config_missing_field() -> None:
    raw = kimi_k2_config()
    del raw["q_lora_rank"]
    with pytest.raises(K2Error, match="field 'q_lora_rank' is missing"):
        ModelConfig.from_dict(raw)


def test_unknown_model_type() -> None:
    with pytest.raises(K2Error, match="'llama' is not a supported architecture"):
        ModelConfig.from_dict(kimi_k2_config() | {"model_type": "llama", "architectures": []})


def test_llama_config_is_named_unsupported_before_missing_fields() -> None:
    # A Llama config.json lacks every MLA/MoE field; the architecture is what is wrong.
    llama = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    }
    with pytest.raises(K2Error) as err:
        ModelConfig.from_dict(llama, "llama/config.json")
    assert str(err.value) == (
        "llama/config.json: field 'model_type': 'llama' is not a supported architecture "
        "(architectures ['LlamaForCausalLM']; supported: deepseek_v3, kimi_k2, "
        "DeepseekV3ForCausalLM)"
    )
    # The architectures list alone is enough to be recognised.
    alias = kimi_k2_config() | {"model_type": "custom"}
    assert architecture_for(ModelConfig.from_dict(alias)) is DEEPSEEK_V3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_hidden_layers": 10**9}, "field 'num_hidden_layers' must be at most 256, got"),
        ({"n_routed_experts": 10**9}, "field 'n_routed_experts' must be at most 1,024, got"),
        (
            {"num_nextn_predict_layers": 10**9},
            "field 'num_nextn_predict_layers' must be at most 16",
        ),
        ({"hidden_size": 10**400}, "field 'hidden_size' must be at most 1,048,576, got <integer"),
        ({"hidden_size": 1e400}, "field 'hidden_size' must be int, got inf"),
        ({"rope_theta": 0}, "field 'rope_theta' must be a positive finite number"),
        ({"rope_theta": float("nan")}, "field 'rope_theta' must be a positive finite number"),
        ({"rope_theta": float("inf")}, "field 'rope_theta' must be a positive finite number"),
        ({"rope_theta": -1.0}, "field 'rope_theta' must be a positive finite number"),
        ({"architectures": [["x"]]}, "field 'architectures' must list names"),
        ({"eos_token_id": [2**40]}, "field 'eos_token_id' must be at most 2,147,483,647"),
    ],
)
def test_implausible_values_are_refused_by_name(change: dict[str, object], message: str) -> None:
    with pytest.raises(K2Error) as err:
        ModelConfig.from_dict(kimi_k2_config() | change, "c/config.json")
    assert str(err.value).startswith(f"c/config.json: {message}"), str(err.value)
    assert len(str(err.value)) < 300


def _streamed(cfg: ModelConfig) -> tuple[int, int, dict[str, int], dict[str, int]]:
    """The slow reference: every tensor of the spec, one at a time."""
    from collections import Counter

    from k2trt.checkpoint.safetensors import DTYPES

    comp: Counter[str] = Counter()
    dtype: Counter[str] = Counter()
    n = mtp = 0
    for spec in DEEPSEEK_V3.tensors(cfg):
        n += 1
        comp[spec.component] += spec.numel
        dtype[spec.dtype] += spec.numel * DTYPES[spec.dtype][0]
        if spec.layer is not None and spec.layer >= cfg.num_hidden_layers:
            mtp += 0 if spec.component in ("scale", "rotary") else spec.numel
    return n, mtp, dict(comp), dict(dtype)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"moe_layer_freq": 2, "first_k_dense_replace": 3},
        {"moe_layer_freq": 3, "first_k_dense_replace": 0, "num_nextn_predict_layers": 2},
        {"first_k_dense_replace": 61, "num_nextn_predict_layers": 1},
        {"q_lora_rank": None, "n_shared_experts": 0, "topk_method": "greedy"},
        {"tie_word_embeddings": True, "quantization_config": None},
    ],
)
def test_closed_form_counts_equal_the_streamed_spec(change: dict[str, object]) -> None:
    raw = kimi_k2_config() | {"n_routed_experts": 16, "num_hidden_layers": 7} | change
    cfg = ModelConfig.from_dict(raw)
    tensors, mtp, by_component, by_dtype = _streamed(cfg)
    counts = count_params(cfg)
    assert (counts.tensors, counts.by_component, counts.bytes_by_dtype) == (
        tensors,
        by_component,
        by_dtype,
    )
    moe = sum(cfg.is_moe_layer(layer) for layer in range(cfg.num_hidden_layers))
    idle = moe * (cfg.n_routed_experts - cfg.num_experts_per_tok) * 3 * 7168 * 2048
    assert counts.activated == counts.weights - idle - mtp


def test_counting_at_the_limits_does_not_walk_layers_or_experts() -> None:
    # 256 layers x 1024 experts is 1.6M tensors to stream; the closed form touches ~60 specs.
    raw = kimi_k2_config() | {"num_hidden_layers": 256, "n_routed_experts": 1024}
    counts = count_params(ModelConfig.from_dict(raw))
    # embed + 15 per layer (norms, MLA, rotary) + dense MLP of layer 0 + router, bias, shared
    # expert and 1024 experts (weight + scale each) of 255 MoE layers + norm and lm_head
    assert counts.tensors == 1 + 256 * 15 + 6 + 255 * (8 + 1024 * 6) + 2
    assert counts.by_component["experts"] == 255 * 1024 * 3 * 7168 * 2048
