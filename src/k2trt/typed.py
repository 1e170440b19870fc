"""Typed records from YAML mappings: unknown fields and wrong types refused by name.

Spec files (`k2trt build --spec`, `release.yaml`) are frozen dataclasses; `from_mapping`
checks a parsed YAML mapping against the dataclass's type hints, strictly (YAML gives
int/float/bool/str/list/dict; no silent string-to-int), nested dataclasses included, and
every error is one line naming the field.

>>> @dataclasses.dataclass(frozen=True)
... class Point:
...     x: int
...     y: int = 0
>>> from_mapping(Point, {"x": 1})
Point(x=1, y=0)
>>> from_mapping(Point, {"x": "1"}, "p")
Traceback (most recent call last):
k2trt.errors.K2Error: p.x: expected int, got str '1'
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from k2trt.errors import K2Error

T = TypeVar("T")
_NO = object()


def from_mapping(cls: type[T], data: object, where: str = "spec") -> T:
    """`cls(**data)` after checking every key and value against `cls`'s type hints."""
    if not isinstance(data, Mapping):
        raise K2Error(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise K2Error(f"{where}: unknown field '{key}'{hint}")
    for f in fields:
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and f.name not in data:
            raise K2Error(f"{where}: field '{f.name}' is required")
    values = {key: coerce(f"{where}.{key}", data[key], hints[key]) for key in data}
    return cls(**values)


def load_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; one-line errors naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise K2Error(f"cannot read the {what}: {exc.strerror or exc}", path=path) from exc
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise K2Error(f"{what} is not valid YAML: {message}", path=path) from exc


def to_plain(value: Any) -> Any:
    """A dataclass (or tuple/mapping of them) as plain YAML/JSON data, keys sorted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return dict(sorted(items.items()))
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in sorted(value.items())}
    return value


def coerce(where: str, value: object, hint: Any) -> Any:
    """`value` checked against `hint`; K2Error naming `where` when it does not fit."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise K2Error(f"{where}: expected a value, got null")
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, Mapping):
            # a record with checks of its own (BuildSpec) parses itself
            parse = getattr(option, "from_mapping", None)
            if parse is not None:
                return parse(value, where)
            return from_mapping(option, value, where)  # type: ignore[arg-type]
        checked = _as(where, value, option)
        if checked is not _NO:
            return checked
    wanted = " or ".join(_name(o) for o in options if o is not type(None))
    raise K2Error(f"{where}: expected {wanted}, got {type(value).__name__} {value!r}")


def _as(where: str, value: object, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if kind is bool:
        return value if isinstance(value, bool) else _NO
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _NO  # type: ignore[arg-type]
    if kind is str:
        return value if isinstance(value, str) else _NO
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _NO
        item = typing.get_args(kind)[0]
        return tuple(coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    if origin in (Mapping, dict) or kind is Mapping:
        if not isinstance(value, Mapping):
            return _NO
        args = typing.get_args(kind)
        if not args or args[1] is Any:
            return dict(value)
        return {
            str(coerce(f"{where} key", k, args[0])): coerce(f"{where}.{k}", v, args[1])
            for k, v in value.items()
        }
    return _NO


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _name(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return f"a list of {_name(typing.get_args(kind)[0])}"
    if typing.get_origin(kind) in (Mapping, dict) or kind is Mapping:
        return "a mapping"
    if dataclasses.is_dataclass(kind):
        return "a mapping"
    return str(getattr(kind, "__name__", kind))
