"""Everything a converted checkpoint holds besides weights: config, generation settings,
tokenizer, chat template and (optionally) the FP8 KV-cache declaration.

The output is what TensorRT-LLM's PyTorch backend loads without remote code. Facts read in
TensorRT-LLM's source (paths relative to its repository):

- ``tensorrt_llm/_torch/pyexecutor/config_utils.py`` (``load_pretrained_config``): its
  ``_CONFIG_REGISTRY`` maps ``kimi_k2`` to its own ``DeepseekV3Config``; ``deepseek_v3`` goes
  through transformers' class. Either way ``auto_map`` is never needed, and the model class
  is picked from ``architectures[0]`` (``DeepseekV3ForCausalLM``,
  ``_torch/models/modeling_deepseekv3.py``). ``model_type`` stays ``kimi_k2``: engines key
  Kimi behaviour (tool-call ids, parser choice) on it. But TensorRT-LLM loads the tokenizer
  with ``AutoTokenizer.from_pretrained(model_dir)`` (``tensorrt_llm/llmapi/tokenizer.py``),
  and transformers 5.x (recent TensorRT-LLM sources pin 5.5.4; checked with 5.5.4 and 5.23)
  reads ``config.json`` first: for the unregistered ``kimi_k2`` its fallback config crashes in
  RoPE standardization (``AttributeError: max_position_embeddings``); 4.57.1 reads
  ``tokenizer_class`` first and loads it. So the tokenizer is also written to ``tokenizer/``,
  a directory without ``config.json`` that any version loads: point the engine's
  ``tokenizer`` option there.
- ``tensorrt_llm/_torch/attention_backend/interface.py`` (``RopeParams.from_config``) reads
  ``rope_scaling["type"]`` or ``["rope_type"]``, and transformers reads either too, so the
  published ``"type": "yarn"`` needs no second key. Likewise transformers 5 maps
  ``torch_dtype`` onto ``dtype`` and ``_torch/model_config.py`` copies ``dtype`` back to
  ``torch_dtype``: one key is enough.
- ``tensorrt_llm/_torch/configs/deepseek_v3.py``: a field missing from ``config.json`` takes
  that class's DeepSeek-V3 default, some of which differ from what our inventory assumes
  (``k2trt.models.config.FIELDS``); such fields are written explicitly (``_PINNED_DEFAULTS``).
- ``tensorrt_llm/_torch/model_config.py`` (``ModelConfig.from_pretrained``): see
  :func:`hf_quant_config`.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2trt import __version__
from k2trt.chat.hf_export import export_hf_tokenizer
from k2trt.chat.template import ChatTemplate, load_chat_template
from k2trt.chat.tokenizer import KimiTokenizer
from k2trt.errors import K2Error
from k2trt.fsutil import read_json, write_json_atomic, write_text_atomic
from k2trt.models.config import ModelConfig

__all__ = [
    "DTYPES",
    "TOKENIZER_FILES",
    "ConfigChange",
    "MetadataResult",
    "generation_config",
    "hf_quant_config",
    "normalize_config",
    "write_metadata",
]

DTYPES = ("fp8", "bf16")
# What our tokenizer (and the HF export) is built from; both must be in the source.
TOKENIZER_FILES = ("tiktoken.model", "tokenizer_config.json")
# Moonshot's recommended sampling temperature for Kimi K2 Instruct (model card).
RECOMMENDED_TEMPERATURE = 0.6

# A tokenizer-only copy that AutoTokenizer loads whatever the model_type (see module doc).
TOKENIZER_DIR = "tokenizer"
# Fields this module decides; an override of them would undo that.
_MANAGED_FIELDS = frozenset({"auto_map", "model_type", "quantization_config"})
# Fields whose default in TensorRT-LLM's DeepseekV3Config (DeepSeek-V3's sizes) differs from the
# default our inventory assumes when config.json omits them: field -> (ours, TensorRT-LLM's).
_PINNED_DEFAULTS: dict[str, tuple[int, int]] = {
    "num_nextn_predict_layers": (0, 1),
    "n_group": (1, 8),
    "topk_group": (1, 4),
}
# TensorRT-LLM's default exclusions for block-FP8 checkpoints read from config.json
# (`load_hf_quant_config`): kv_b_proj is dequantized at load because 128x128 scale blocks need
# not align with per-head boundaries; eh_proj is the MTP projection.
_FP8_BLOCK_EXCLUDES = ("*kv_b_proj*", "*k_b_proj*", "*eh_proj")


@dataclass(frozen=True)
class ConfigChange:
    """One documented change to ``config.json``; ``None`` stands for "absent".

    >>> ConfigChange("auto_map", {"AutoConfig": "x"}, None, "remote code is never executed")
    ConfigChange(field='auto_map', before={'AutoConfig': 'x'}, after=None, why='remote code is never executed')
    """  # noqa: E501

    field: str
    before: Any
    after: Any
    why: str


@dataclass(frozen=True)
class MetadataResult:
    """What :func:`write_metadata` wrote.

    >>> write_metadata(Path("src"), Path("out")).files  # doctest: +SKIP
    ['chat_template.jinja', 'config.json', 'generation_config.json', 'tiktoken.model', ...]
    """

    config: dict[str, Any]  # the config.json written
    changes: list[ConfigChange]
    files: list[str]  # file names written into out (sorted)
    chat_template: dict[str, str]  # name (revision it renders like, or "custom"), sha256, source


# ---------------------------------------------------------------------------------------------
# config.json


def normalize_config(
    raw: dict[str, Any],
    *,
    dtype: str = "fp8",
    overrides: dict[str, tuple[Any, str]] | None = None,
    path: str | Path = "config.json",
) -> tuple[dict[str, Any], list[ConfigChange]]:
    """The ``config.json`` TensorRT-LLM gets, and every change made to the source's.

    `overrides` maps a field to ``(value, why)``; each is applied and recorded with the
    caller's why. A change that leaves a value as it was is not recorded.

    >>> cfg, changes = normalize_config(raw, dtype="bf16")  # doctest: +SKIP
    >>> [c.field for c in changes]  # doctest: +SKIP
    ['auto_map', 'model_type', 'quantization_config']
    """
    if dtype not in DTYPES:
        raise K2Error(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", path=path)
    if not isinstance(raw, dict):
        raise K2Error("config must be a JSON object", path=path)
    config = copy.deepcopy(raw)
    changes: list[ConfigChange] = []
    _drop(
        config,
        changes,
        "auto_map",
        "remote code is never executed; TensorRT-LLM knows DeepseekV3ForCausalLM",
    )
    if dtype == "bf16":
        _to_bf16(config, changes)
    else:
        _check_fp8(config, path)
    _apply_overrides(config, changes, overrides or {}, path)
    _pin_defaults(config, changes)
    ModelConfig.from_dict(config, str(path))  # the result must still be a valid config
    return config, changes


def _set(
    config: dict[str, Any], changes: list[ConfigChange], name: str, value: Any, why: str
) -> None:
    before = config.get(name)
    if name in config and before == value:
        return
    config[name] = value
    changes.append(ConfigChange(name, before, value, why))


def _drop(config: dict[str, Any], changes: list[ConfigChange], name: str, why: str) -> None:
    if name in config:
        changes.append(ConfigChange(name, config.pop(name), None, why))


def _to_bf16(config: dict[str, Any], changes: list[ConfigChange]) -> None:
    _drop(
        config,
        changes,
        "quantization_config",
        "weights are written as bfloat16; with it TensorRT-LLM would build FP8 block-scale layers",
    )
    why = "every weight is bfloat16 after dequantization"
    # transformers accepts either key (keeping `dtype` when both are present): set what is there.
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    for key in keys:
        _set(config, changes, key, "bfloat16", why)


def _check_fp8(config: dict[str, Any], path: str | Path) -> None:
    # An fp8 output passes the source's block-FP8 weights through; TensorRT-LLM's FP8 block-scale
    # path asserts 128x128 blocks (`load_hf_quant_config`).
    block = ModelConfig.from_dict(config, str(path)).fp8_block
    if block is None:
        raise K2Error(
            "quantization_config: dtype fp8 needs a block-FP8 source (quant_method 'fp8'); "
            "use dtype bf16",
            path=path,
        )
    if block != (128, 128):
        raise K2Error(
            f"quantization_config.weight_block_size must be [128, 128] for TensorRT-LLM, "
            f"got {list(block)}",
            path=path,
        )


def _apply_overrides(
    config: dict[str, Any],
    changes: list[ConfigChange],
    overrides: dict[str, tuple[Any, str]],
    path: str | Path,
) -> None:
    for name in sorted(overrides):
        entry = overrides[name]
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise K2Error(f"override {name!r} must be (value, why), got {entry!r}", path=path)
        value, why = entry
        if not isinstance(why, str) or not why.strip():
            raise K2Error(f"override {name!r} needs a reason (why)", path=path)
        if name in _MANAGED_FIELDS:
            raise K2Error(
                f"override {name!r}: set by the conversion itself, not overridable", path=path
            )
        _set(config, changes, name, copy.deepcopy(value), why)


def _pin_defaults(config: dict[str, Any], changes: list[ConfigChange]) -> None:
    src = "tensorrt_llm/_torch/configs/deepseek_v3.py"
    for name, (ours, theirs) in _PINNED_DEFAULTS.items():
        if name not in config:
            why = f"absent: TensorRT-LLM's DeepseekV3Config ({src}) would default it to {theirs}"
            _set(config, changes, name, ours, why)
    # MLA has one KV head per attention head; TensorRT-LLM's default is DeepSeek-V3's 128.
    if "num_key_value_heads" not in config:
        heads = config.get("num_attention_heads")
        why = f"absent: TensorRT-LLM's DeepseekV3Config ({src}) would default it to 128"
        _set(config, changes, "num_key_value_heads", heads, why)


# ---------------------------------------------------------------------------------------------
# generation_config.json and hf_quant_config.json


def generation_config(
    source: dict[str, Any], config: dict[str, Any], im_end_id: int
) -> dict[str, Any]:
    """The source's generation settings with Kimi's stop tokens and sampling defaults.

    An assistant turn ends with ``<|im_end|>``, not the config's ``[EOS]``, so both stop
    generation; bos and max_length are kept (filled from the config when absent).

    >>> generation_config({}, {"eos_token_id": 2, "bos_token_id": 1,
    ...                        "max_position_embeddings": 8}, 7)
    {'eos_token_id': [7, 2], 'temperature': 0.6, 'do_sample': True, 'bos_token_id': 1, 'max_length': 8}
    """  # noqa: E501
    gen = copy.deepcopy(source)
    eos = config.get("eos_token_id")
    config_eos = eos if isinstance(eos, list) else [] if eos is None else [eos]
    gen["eos_token_id"] = list(dict.fromkeys([im_end_id, *config_eos]))
    gen["temperature"] = RECOMMENDED_TEMPERATURE
    gen["do_sample"] = True
    if "bos_token_id" not in gen and config.get("bos_token_id") is not None:
        gen["bos_token_id"] = config["bos_token_id"]
    if "max_length" not in gen and "max_position_embeddings" in config:
        gen["max_length"] = config["max_position_embeddings"]
    return gen


def hf_quant_config(config: dict[str, Any]) -> dict[str, Any]:
    """``hf_quant_config.json`` declaring an FP8 KV cache for a normalized `config`.

    Read by ``tensorrt_llm/_torch/model_config.py`` (``ModelConfig.from_pretrained``) in the
    legacy ModelOpt shape ``{"quantization": {...}}`` (``quantization/modelopt_config.py``).
    When the file exists it is authoritative: older releases then ignore config.json's
    ``quantization_config`` entirely, and newer ones fall back to it only when ``quant_algo``
    is null, building a fresh QuantConfig that drops ``kv_cache_quant_algo``. So a block-FP8
    output must repeat ``FP8_BLOCK_SCALES`` (group 128, TensorRT-LLM's default exclusions)
    here; a bf16 output has ``quant_algo`` null and no quantization_config to fall back to.
    With ``kv_cache_config.dtype="auto"`` the runtime then uses ``kv_cache_quant_algo``
    (``_torch/pyexecutor/model_loader.py``, ``validate_and_set_kv_cache_quant``).

    >>> hf_quant_config({"model_type": "kimi_k2"})["quantization"]
    {'kv_cache_quant_algo': 'FP8', 'quant_algo': None}
    """
    quant: dict[str, Any] = {"kv_cache_quant_algo": "FP8", "quant_algo": None}
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "fp8":
        keep = qc.get("modules_to_not_convert") or []
        quant["quant_algo"] = "FP8_BLOCK_SCALES"
        quant["group_size"] = qc.get("weight_block_size", [128, 128])[0]
        quant["exclude_modules"] = list(dict.fromkeys([*keep, *_FP8_BLOCK_EXCLUDES]))
    return {"producer": {"name": "k2trt", "version": __version__}, "quantization": quant}


# ---------------------------------------------------------------------------------------------
# Writing the directory


def write_metadata(
    src: Path,
    out: Path,
    *,
    dtype: str = "fp8",
    kv_cache_fp8: bool = False,
    config_overrides: dict[str, tuple[Any, str]] | None = None,
) -> MetadataResult:
    """Write every non-weight file of the converted checkpoint into `out`.

    Never copies a ``*.py`` file from `src`: the tokenizer is exported as a plain HF fast
    tokenizer, and the chat template is pinned in ``chat_template.jinja`` and
    ``tokenizer_config.json`` alike.

    >>> write_metadata(Path("Kimi-K2-Instruct"), Path("out.partial"), kv_cache_fp8=True)  # doctest: +SKIP
    """  # noqa: E501
    src, out = Path(src), Path(out)
    raw = read_json(src / "config.json", "config", root=src)
    config, changes = normalize_config(
        raw, dtype=dtype, overrides=config_overrides, path=src / "config.json"
    )
    for name in TOKENIZER_FILES:
        if not (src / name).is_file():
            raise K2Error(
                "missing (the converted checkpoint's tokenizer is built from it)", path=src / name
            )
    tok = KimiTokenizer.from_dir(src)
    chat = load_chat_template(src)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise K2Error(f"cannot create output directory: {exc.strerror}", path=out) from None
    written = [out / "config.json", out / "generation_config.json", out / "tiktoken.model"]
    write_json_atomic(written[0], config)
    write_json_atomic(written[1], generation_config(_source_generation(src), config, tok.im_end_id))
    _copy_atomic(src / "tiktoken.model", written[2])
    written += _write_tokenizer(tok, chat, out)
    if kv_cache_fp8:
        written.append(out / "hf_quant_config.json")
        write_json_atomic(written[-1], hf_quant_config(config))
    return MetadataResult(
        config=config,
        changes=changes,
        files=sorted(p.name for p in written),
        chat_template={"name": chat.name, "sha256": chat.sha256, "source": chat.source},
    )


def _source_generation(src: Path) -> dict[str, Any]:
    path = src / "generation_config.json"
    if not path.exists():
        return {}
    data = read_json(path, "generation config", root=src)
    if not isinstance(data, dict):
        raise K2Error("generation config must be a JSON object", path=path)
    return data


def _write_tokenizer(tok: KimiTokenizer, chat: ChatTemplate, out: Path) -> list[Path]:
    written = export_hf_tokenizer(tok, out)
    # The export copies the source config's chat_template, which may be absent, the list form,
    # or shadowed by a chat_template.jinja; pin the one template we resolved in both places.
    config_path = out / "tokenizer_config.json"
    tok_config = read_json(config_path, "tokenizer config")
    tok_config["chat_template"] = chat.text
    write_json_atomic(config_path, tok_config)
    template_path = out / "chat_template.jinja"
    write_text_atomic(template_path, chat.text)
    sub = out / TOKENIZER_DIR
    sub.mkdir(exist_ok=True)
    for path in (*written, template_path):
        _copy_atomic(path, sub / path.name)
    return [*written, template_path, sub]


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise K2Error(f"cannot copy to {dst}: {exc.strerror}", path=src) from None
