"""What to build, as typed data: from `--spec SPEC.yaml`, from command-line flags, or both.

A spec says which GPUs and what traffic (context, concurrency, batch limits); the layout and
the TensorRT-LLM options follow from the plan unless the spec pins them.

>>> spec = BuildSpec.from_mapping({"gpus": "H200x8", "context": 32768})
>>> spec.gpus, spec.context, spec.kv_dtype
('H200x8', 32768, 'fp8')
>>> BuildSpec.from_mapping({"gpus": "H200x8", "contxt": 1})
Traceback (most recent call last):
k2trt.errors.K2Error: spec: unknown field 'contxt' (did you mean 'context'?)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from k2trt.errors import K2Error
from k2trt.typed import from_mapping, load_yaml

KV_DTYPES = ("fp8", "bf16")


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    """One deployment target. None means "derive it" (from the plan or the checkpoint)."""

    gpus: str  # NAMExCOUNT as `k2trt plan --gpus` takes it
    context: int | None = None  # max_seq_len; default the checkpoint's max_position_embeddings
    concurrency: int = 1  # requests of `context` tokens the KV cache must hold at once
    max_batch_size: int = 128  # per attention-DP rank, as TensorRT-LLM counts it
    max_num_tokens: int = 8192
    kv_dtype: str = "fp8"
    kv_fraction: float = 0.9  # kv_cache_config.free_gpu_memory_fraction
    block_reuse: bool = True
    tp: int | None = None
    ep: int | None = None
    pp: int | None = None
    attention_dp: bool | None = None
    cuda_graph_batch_sizes: tuple[int, ...] | None = None
    moe_backend: str | None = None  # default: by GPU generation
    model_name: str | None = None  # the served model id; default the checkpoint directory name
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # more LLM API options

    @classmethod
    def from_mapping(cls, data: object, where: str = "spec") -> BuildSpec:
        """Check names and types (one-line K2Error naming the field) and build a spec."""
        if not isinstance(data, Mapping):
            raise K2Error(f"{where}: expected a mapping of build fields")
        if "gpus" not in data:
            raise K2Error(f"{where}: field 'gpus' is required (e.g. gpus: H200x8)")
        spec = from_mapping(cls, data, where)
        spec.check(where)
        return spec

    @classmethod
    def load(cls, path: Path) -> BuildSpec:
        """A spec from a YAML file."""
        return cls.from_mapping(load_yaml(path, "build spec"), where=str(path))

    def merged(self, overrides: Mapping[str, Any]) -> BuildSpec:
        """This spec with command-line values (those not None) on top."""
        data = {**self.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
        return BuildSpec.from_mapping(data)

    def check(self, where: str = "spec") -> None:
        for name in ("concurrency", "max_batch_size", "max_num_tokens"):
            if getattr(self, name) < 1:
                raise K2Error(f"{where}.{name}: expected at least 1, got {getattr(self, name)}")
        if self.context is not None and self.context < 1:
            raise K2Error(f"{where}.context: expected at least 1, got {self.context}")
        if self.kv_dtype not in KV_DTYPES:
            raise K2Error(f"{where}.kv_dtype: expected fp8 or bf16, got {self.kv_dtype!r}")
        if not 0.0 < self.kv_fraction <= 1.0:
            raise K2Error(
                f"{where}.kv_fraction: expected a fraction in (0, 1], got {self.kv_fraction}"
            )
        if self.cuda_graph_batch_sizes is not None and (
            not self.cuda_graph_batch_sizes or min(self.cuda_graph_batch_sizes) < 1
        ):
            raise K2Error(f"{where}.cuda_graph_batch_sizes: expected positive batch sizes")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists), every field, sorted: what the build record keeps."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return dict(sorted(out.items()))
