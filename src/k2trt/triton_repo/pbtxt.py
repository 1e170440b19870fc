"""Triton `config.pbtxt` from typed data: a few dataclasses and a protobuf text-format writer.

Field names are those of `inference.ModelConfig` (triton-inference-server/common,
protobuf/model_config.proto); tests parse every generated file back with tritonclient's
compiled schema (`tritonclient.grpc.model_config_pb2`) and compare it field by field.
Only fields that tritonserver 2.51 and the 2.7x containers both know are written.

>>> cfg = ModelConfig("m", max_batch_size=0, inputs=(Tensor("x", "TYPE_INT32", (-1,)),))
>>> print(render(cfg.to_message()).splitlines()[0])
name: "m"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DATA_TYPES = frozenset(
    {"TYPE_BOOL", "TYPE_INT32", "TYPE_INT64", "TYPE_UINT64", "TYPE_FP32", "TYPE_STRING"}
)
INSTANCE_KINDS = frozenset({"KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL"})


class Enum(str):
    """A protobuf enum value: written bare (TYPE_INT32), not quoted."""


@dataclass(frozen=True)
class Tensor:
    """One input or output; `dims` exclude the batch dimension when max_batch_size > 0."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False  # inputs only: a request may leave it out

    def __post_init__(self) -> None:
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"{self.name}: unknown data type {self.data_type}")


@dataclass(frozen=True)
class InstanceGroup:
    kind: str = "KIND_CPU"
    count: int = 1

    def __post_init__(self) -> None:
        if self.kind not in INSTANCE_KINDS or self.count < 1:
            raise ValueError(f"bad instance group {self.kind} x {self.count}")


@dataclass(frozen=True)
class ModelConfig:
    """The fields of one Python-backend model's config.pbtxt that we write.

    `max_batch_size` and `decoupled` are always written, even at their defaults: upstream's
    launcher runs tritonserver with --disable-auto-complete-config, so nothing else would
    set them."""

    name: str
    max_batch_size: int
    backend: str = "python"
    decoupled: bool = False
    inputs: tuple[Tensor, ...] = ()
    outputs: tuple[Tensor, ...] = ()
    instance_group: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    parameters: Mapping[str, str] = field(default_factory=dict)

    def to_message(self) -> dict[str, Any]:
        """The config as a proto-shaped dict (field order as in model_config.proto)."""
        return {
            "name": self.name,
            "backend": self.backend,
            "max_batch_size": self.max_batch_size,
            "input": [_input(t) for t in self.inputs],
            "output": [_output(t) for t in self.outputs],
            "instance_group": [
                {"kind": Enum(g.kind), "count": g.count} for g in self.instance_group
            ],
            "parameters": [
                {"key": k, "value": {"string_value": v}} for k, v in sorted(self.parameters.items())
            ],
            "model_transaction_policy": {"decoupled": self.decoupled},
        }

    def text(self) -> str:
        """The config.pbtxt text."""
        return render(self.to_message())


def _input(t: Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "data_type": Enum(t.data_type), "dims": list(t.dims)}
    if t.optional:
        out["optional"] = True
    return out


def _output(t: Tensor) -> dict[str, Any]:
    if t.optional:
        raise ValueError(f"output {t.name} cannot be optional")
    return {"name": t.name, "data_type": Enum(t.data_type), "dims": list(t.dims)}


def render(message: Mapping[str, Any], indent: int = 0) -> str:
    """Protobuf text format for a proto-shaped dict: nested dicts are messages, lists of
    dicts repeated messages, lists of scalars packed `[ ... ]`, Enum values bare."""
    pad = "  " * indent
    lines: list[str] = []
    for name, value in message.items():
        if isinstance(value, Mapping):
            lines += [f"{pad}{name} {{", render(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if value and all(isinstance(v, Mapping) for v in value):
                for item in value:
                    lines += [f"{pad}{name} {{", render(item, indent + 1), f"{pad}}}"]
            elif value or name == "dims":  # dims: [ ] is meaningful; other empty lists are not
                lines.append(f"{pad}{name}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"cannot write {type(value).__name__} in a config")


_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", 9: "\\t"}


def quote(text: str) -> str:
    """A text-format string literal: C escapes, non-ASCII as octal UTF-8 bytes.

    >>> print(quote('say "hi" é'))
    "say \\"hi\\" \\303\\251"
    """
    out = []
    for byte in text.encode("utf-8"):
        if byte in _ESCAPES:
            out.append(_ESCAPES[byte])
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'
