"""TensorRT-LLM LLM-API options as typed data, written as YAML and checked against a pinned schema.

The options file is what `trtllm-serve --config` (alias `--extra_llm_api_options`) reads and what
the `model.yaml` of Triton's LLM-API `tensorrt_llm` model carries (minus its `triton_config`
block). It is always generated from the dataclasses below and parsed back, never templated.
`llmapi_schema.json` beside this file holds the option names, types, enum values and defaults of
one TensorRT-LLM commit, with its provenance.

>>> opts = LlmApiOptions(tensor_parallel_size=8, moe_config=MoeConfig(backend="CUTLASS"))
>>> opts.to_dict()
{'moe_config': {'backend': 'CUTLASS'}, 'tensor_parallel_size': 8}
>>> validate_options({"tensor_paralel_size": 8})
["unknown option 'tensor_paralel_size' (did you mean 'tensor_parallel_size'?)"]
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from typing import Any, ClassVar

import yaml

from k2trt.errors import K2Error

SCHEMA_PACKAGE = "k2trt.build"
SCHEMA_FILE = "llmapi_schema.json"

# Generated ids per streamed response: TensorRT-LLM's `stream_interval` (TorchLlmArgs in
# NVIDIA/TensorRT-LLM tensorrt_llm/llmapi/llm_args.py: "The iteration interval to create
# responses under the streaming mode. Set this to a larger value when the batch size is large,
# which helps reduce the streaming overhead"; upstream's default is 1). Ours is larger because
# every streamed response costs the Python serving layers above the engine (Triton `chat`, the
# gateway) a fixed amount of CPU, whatever it carries: bench/triton_bench.py measured it. A
# spec's `options: {stream_interval: N}` overrides it (1: a response per token).
DEFAULT_STREAM_INTERVAL = 16

# MoE backend for Kimi K2's block-FP8 (128x128) experts, by GPU generation (the `generation`
# values of k2trt.build.gpus). Written out explicitly because MoeConfig.backend defaulted to
# CUTLASS up to 1.1 and defaults to AUTO since, and AUTO's choice may change between releases.
# Read in NVIDIA/TensorRT-LLM:
# - docs/source/deployment-guide/deployment-guide-for-deepseek-r1-on-trtllm.md, "MoE Backend
#   Support Matrix": H100/H200 + FP8 -> CUTLASS; B200/GB200 (EP <= 8) + FP8 -> DEEPGEMM.
# - tensorrt_llm/_torch/modules/fused_moe/fused_moe_cutlass.py, CutlassFusedMoE docstring:
#   "fp8 block scales (SM90 Hopper only)", so CUTLASS is the Hopper path and not a Blackwell one.
# - tensorrt_llm/_torch/modules/fused_moe/moe_resolution.py, WIDEEP_DEPRECATION_MESSAGE: "use
#   DEEPGEMM for FP8 block-scale checkpoints" (WIDEEP, the old wide-EP choice, now raises).
MOE_BACKEND_BY_GENERATION: dict[str, str] = {"hopper": "CUTLASS", "blackwell": "DEEPGEMM"}


class _Options:
    """Shared `to_dict` for the option dataclasses: only fields that are set, keys sorted."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        # None means "TensorRT-LLM's default", so it is left out rather than written as null:
        # trtllm-serve builds kv_cache_config, moe_config, attention_dp_config... with
        # `Class(**value)` (update_llm_args_with_extra_dict), which a null would crash.
        out = {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != "extra" and getattr(self, f.name) is not None
        }
        return dict(sorted(out.items()))


def _plain(value: object) -> Any:
    """Nested dataclasses become dicts and tuples lists, so YAML sees plain data."""
    if isinstance(value, _Options):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class KvCacheConfig(_Options):
    """`kv_cache_config`; a field left at None keeps TensorRT-LLM's default.

    >>> KvCacheConfig(dtype="fp8", free_gpu_memory_fraction=0.85).to_dict()
    {'dtype': 'fp8', 'free_gpu_memory_fraction': 0.85}
    """

    dtype: str | None = None
    enable_block_reuse: bool | None = None
    free_gpu_memory_fraction: float | None = None
    max_tokens: int | None = None
    tokens_per_block: int | None = None


@dataclasses.dataclass(frozen=True)
class CudaGraphConfig(_Options):
    """`cuda_graph_config` (decode graphs; TensorRT-LLM enables them by default).

    >>> CudaGraphConfig(enable_padding=True, batch_sizes=(1, 8)).to_dict()
    {'batch_sizes': [1, 8], 'enable_padding': True}
    """

    enable_padding: bool | None = None
    max_batch_size: int | None = None
    batch_sizes: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class MoeConfig(_Options):
    """`moe_config`; see `moe_backend_for` for the backend.

    >>> MoeConfig(backend=moe_backend_for("hopper")).to_dict()
    {'backend': 'CUTLASS'}
    """

    backend: str | None = None
    max_num_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class AttentionDpConfig(_Options):
    """`attention_dp_config` (request balancing across attention-DP ranks).

    >>> AttentionDpConfig(enable_balance=True).to_dict()
    {'enable_balance': True}
    """

    enable_balance: bool | None = None
    batching_wait_iters: int | None = None
    timeout_iters: int | None = None


@dataclasses.dataclass(frozen=True)
class LlmApiOptions(_Options):
    """The whole options file. `extra` carries options not modelled here (still validated).

    >>> LlmApiOptions(max_batch_size=64, extra={"print_iter_log": True}).to_dict()
    {'max_batch_size': 64, 'print_iter_log': True}
    """

    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    moe_expert_parallel_size: int | None = None
    moe_tensor_parallel_size: int | None = None
    enable_attention_dp: bool | None = None
    max_batch_size: int | None = None
    max_num_tokens: int | None = None
    max_seq_len: int | None = None
    kv_cache_config: KvCacheConfig | None = None
    cuda_graph_config: CudaGraphConfig | None = None
    moe_config: MoeConfig | None = None
    attention_dp_config: AttentionDpConfig | None = None
    enable_chunked_prefill: bool | None = None
    stream_interval: int | None = None
    print_iter_log: bool | None = None
    trust_remote_code: bool | None = None
    backend: str | None = None
    tokenizer: str | None = None
    skip_tokenizer_init: bool | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        clash = sorted(set(out) & set(self.extra))
        if clash:
            # Two sources for one key would make the file depend on merge order.
            raise K2Error(f"option '{clash[0]}': set both as a field and in extra; expected one")
        return dict(sorted({**out, **self.extra}.items()))

    def to_yaml(self) -> str:
        """The options file text: block-style YAML with sorted keys.

        >>> print(LlmApiOptions(backend="pytorch", tensor_parallel_size=8).to_yaml(), end="")
        backend: pytorch
        tensor_parallel_size: 8
        """
        text: str = yaml.safe_dump(self.to_dict(), sort_keys=True, default_flow_style=False)
        return text


def moe_backend_for(gpu_generation: str) -> str:
    """MoE backend for block-FP8 experts on a GPU generation (see MOE_BACKEND_BY_GENERATION).

    >>> moe_backend_for("blackwell")
    'DEEPGEMM'
    """
    backend = MOE_BACKEND_BY_GENERATION.get(gpu_generation.strip().lower())
    if backend is None:
        known = ", ".join(sorted(MOE_BACKEND_BY_GENERATION))
        raise K2Error(
            f"moe_config.backend: no block-FP8 MoE backend known for GPU generation "
            f"{gpu_generation!r}; expected one of {known}"
        )
    return backend


@cache
def load_schema() -> dict[str, Any]:
    """The pinned option schema (cached; treat it as read-only).

    >>> load_schema()["provenance"]["repo"]
    'NVIDIA/TensorRT-LLM'
    """
    source = resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_FILE)
    try:
        schema: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise K2Error(f"cannot read the LLM-API option schema: {exc}", path=str(source)) from exc
    return schema


# Types are stricter than pydantic's lax mode on purpose: a string where an int belongs means a
# bug in whatever generated the file, even if TensorRT-LLM would coerce it.
_TYPE_CHECKS: dict[str, Callable[[object], bool]] = {
    "any": lambda v: True,
    "bool": lambda v: isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "list[int]": lambda v: (
        isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    ),
    "object": lambda v: isinstance(v, Mapping),
    "str": lambda v: isinstance(v, str),
}


def validate_options(options: object, schema: Mapping[str, Any] | None = None) -> list[str]:
    """One line per problem: unknown names (with a did-you-mean), wrong types, enums, bounds.

    >>> validate_options({"max_batch_size": "128"})
    ["option 'max_batch_size': expected int, got str '128'"]
    """
    specs = (schema if schema is not None else load_schema())["options"]
    if not isinstance(options, Mapping):
        return [f"options: expected a mapping of option names, got {_describe(options)}"]
    return _check_mapping(options, specs, prefix="") + _not_with_token_ids(options)


def _not_with_token_ids(options: Mapping[Any, Any]) -> list[str]:
    """Upstream options k2trt's token-id interface cannot honour (TensorRT-LLM source at the
    schema's commit: with skip_tokenizer_init the LLM loads no tokenizer, and the PyTorch
    executor's get_guided_decoding_config asserts one for xgrammar and llguidance)."""
    if options.get("guided_decoding_backend") is None:
        return []
    return [
        "option 'guided_decoding_backend': needs TensorRT-LLM's tokenizer, which k2trt skips "
        "(skip_tokenizer_init); constrained tool calls run as k2trt's logits processor "
        "(k2trt serve --tool-grammar, the Triton preprocessing model's tool_grammar)"
    ]


def ensure_valid(options: Mapping[str, Any], *, path: str | None = None) -> None:
    """Raise K2Error naming the first problem (and how many more), or return quietly.

    >>> ensure_valid({"max_batch_size": 8})
    """
    problems = validate_options(options)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise K2Error(problems[0] + more, path=path)


def _check_mapping(
    values: Mapping[Any, Any], specs: Mapping[str, Any], *, prefix: str
) -> list[str]:
    problems: list[str] = []
    for name in sorted(values, key=str):
        full = f"{prefix}{name}"
        if name in specs:
            problems += _check_value(full, values[name], specs[name])
            continue
        close = difflib.get_close_matches(str(name), list(specs), n=1, cutoff=0.6)
        hint = f"did you mean '{prefix}{close[0]}'?" if close else "not a TensorRT-LLM option"
        problems.append(f"unknown option '{full}' ({hint})")
    return problems


def _check_value(full: str, value: object, spec: Mapping[str, Any]) -> list[str]:
    if value is None:
        return (
            [] if spec.get("optional") else [f"option '{full}': expected {spec['type']}, got null"]
        )
    if not _TYPE_CHECKS[spec["type"]](value):
        return [f"option '{full}': expected {spec['type']}, got {_describe(value)}"]
    if "enum" in spec and value not in spec["enum"]:
        return [f"option '{full}': expected one of {', '.join(spec['enum'])}; got {value!r}"]
    if isinstance(value, (int, float)):
        return _check_bounds(full, value, spec)
    if "fields" in spec and isinstance(value, Mapping):
        return _check_mapping(value, spec["fields"], prefix=f"{full}.")
    return []


def _check_bounds(full: str, value: float, spec: Mapping[str, Any]) -> list[str]:
    """Upstream's ge/le/PositiveInt/NonNegativeInt, kept in the schema as minimum/maximum."""
    if "minimum" in spec and value < spec["minimum"]:
        return [f"option '{full}': expected at least {spec['minimum']}, got {value!r}"]
    if "maximum" in spec and value > spec["maximum"]:
        return [f"option '{full}': expected at most {spec['maximum']}, got {value!r}"]
    return []


def _describe(value: object) -> str:
    """YAML-flavoured type name and value, e.g. `str '128'`."""
    kind = "mapping" if isinstance(value, Mapping) else type(value).__name__
    return f"{kind} {value!r}" if not isinstance(value, (Mapping, list)) else kind
