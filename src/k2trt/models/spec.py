"""Tensor specs and the architecture registry (aliases map to one spec, never a copy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from k2trt.errors import K2Error
from k2trt.models.config import ModelConfig


@dataclass(frozen=True)
class TensorSpec:
    """What a checkpoint must hold under one name.

    `component` groups tensors for reports and memory math; `optional` tensors (rotary caches)
    may be absent; `scale_for` names the weight a block scale belongs to.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    component: str
    layer: int | None = None
    expert: int | None = None
    optional: bool = False
    scale_for: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


SpecFn = Callable[[ModelConfig], Iterator[TensorSpec]]
# (how many times, one representative set of tensors): the spec summarized so that sums over it
# cost the same for 61 layers x 384 experts as for 2 x 2.
GroupFn = Callable[[ModelConfig], Iterator[tuple[int, list[TensorSpec]]]]


@dataclass(frozen=True)
class Architecture:
    """One model family: the HF architecture strings and model_types it answers to."""

    name: str
    hf_architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    tensors: SpecFn
    groups: GroupFn


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    for key in (*arch.model_types, *arch.hf_architectures):
        _REGISTRY[key] = arch
    return arch


def architecture_for(cfg: ModelConfig) -> Architecture:
    """The registered family for a config, by model_type, then by `architectures`.

    >>> architecture_for(cfg).name  # doctest: +SKIP
    'deepseek_v3'
    """
    for key in (cfg.model_type, *(cfg.architectures or [])):
        if key in _REGISTRY:
            return _REGISTRY[key]
    known = ", ".join(sorted(k for k in _REGISTRY if not k[0].isupper()))
    raise K2Error(
        f"field 'model_type': {cfg.model_type!r} is not a supported architecture (known: {known})",
        path=cfg.path,
    )


def is_supported(model_type: str, architectures: list[str]) -> bool:
    """Whether a registered family answers to the model_type or one of the architectures."""
    return any(key in _REGISTRY for key in (model_type, *architectures))


def supported_names() -> list[str]:
    """model_types, then HF architecture strings, as error messages list them."""
    return [
        *known_model_types(),
        *sorted({a for r in _REGISTRY.values() for a in r.hf_architectures}),
    ]


def known_model_types() -> list[str]:
    return sorted({t for a in _REGISTRY.values() for t in a.model_types})
