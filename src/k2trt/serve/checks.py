"""Request-body checks whose errors name the field at fault, e.g. `messages[0].role`.

Kinds are data: a JSON type's name as an error message says it, and its test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from k2trt.serve.errors import invalid


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    # An int of any size is finite (math.isfinite would overflow converting a huge one).
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "integer": ("an integer", _is_int),
    "number": ("a number", _is_number),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "array": ("an array", lambda v: isinstance(v, list)),
    "object": ("an object", lambda v: isinstance(v, dict)),
}


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type.

    >>> json_type(None), json_type(True), json_type(1.5), json_type([])
    ('null', 'boolean', 'number', 'array')
    """
    if value is None:
        return "null"
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if KINDS[name][1](value):
            return name
    return type(value).__name__


def at(path: str, key: str | int) -> str:
    """`at("messages", 0)` -> `messages[0]`; `at("messages[0]", "role")` -> `messages[0].role`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def expect(value: Any, kind: str, where: str) -> Any:
    """`value` if it is of `kind`, else a 400 naming `where`."""
    desc, test = KINDS[kind]
    if not test(value):
        raise invalid(where, f"expected {desc}, got {json_type(value)}")
    return value


def take(
    obj: Mapping[str, Any], key: str, kind: str, path: str = "", required: bool = False
) -> Any:
    """`obj[key]` checked against `kind`; None when absent or null (400 when `required`)."""
    value = obj.get(key)
    if value is None:
        if required:
            raise invalid(at(path, key), f"required ({KINDS[kind][0]})")
        return None
    return expect(value, kind, at(path, key))


def in_range(value: float, where: str, low: float, high: float, low_open: bool = False) -> float:
    """`value` if low <= value <= high (low < value when `low_open`), else a 400."""
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        shown = _short(value)
        raise invalid(where, f"expected a value in {bracket}{low:g}, {_short(high)}], got {shown}")
    return value


def _short(value: float) -> str:
    """A number for an error message: ints exactly (up to 20 digits), floats as %g."""
    if isinstance(value, int):
        if abs(value) < 10**20:
            return str(value)
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return f"{value:g}"


def one_of(value: str, choices: tuple[str, ...], where: str) -> str:
    """`value` if it is one of `choices`, else a 400 listing them."""
    if value not in choices:
        raise invalid(where, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def strings(value: Any, where: str) -> tuple[str, ...]:
    """A string or an array of non-empty strings, as a tuple (stop sequences)."""
    items = [value] if isinstance(value, str) else expect(value, "array", where)
    for i, item in enumerate(items):
        expect(item, "string", at(where, i) if not isinstance(value, str) else where)
        if not item:
            raise invalid(at(where, i) if not isinstance(value, str) else where, "empty string")
    return tuple(items)


def objects(value: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, item) for each item of an array, each checked to be an object.

    >>> [path for path, _ in objects([{}, {}], "tools")]
    ['tools[0]', 'tools[1]']
    """
    for i, raw in enumerate(expect(value, "array", where)):
        here = at(where, i)
        yield here, expect(raw, "object", here)


def typed_objects(value: Any, where: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(path, item, its `type`) for each object of an array of typed objects (content blocks,
    content parts); `type` is required."""
    for here, item in objects(value, where):
        yield here, item, take(item, "type", "string", here, required=True)


def text_of(item: Mapping[str, Any], where: str) -> str:
    """A text block's or part's required `text`."""
    return str(take(item, "text", "string", where, required=True))


def joined_text(content: Any, where: str, noun: str) -> str:
    """A string, or an array of text `noun`s (`{"type": "text", "text": ...}`) joined.

    >>> joined_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "c", "parts")
    'ab'
    """
    if isinstance(content, str):
        return content
    texts = []
    for here, item, kind in typed_objects(content, where):
        if kind != "text":
            raise invalid(at(here, "type"), f"only text {noun} are supported, got {kind!r}")
        texts.append(text_of(item, here))
    return "".join(texts)


def function_tool(
    source: Mapping[str, Any], where: str, schema_key: str, schema_required: bool = False
) -> dict[str, Any]:
    """An OpenAI function tool from `source`'s name, description and JSON schema (OpenAI's
    `function` object keeps it in `parameters`, an Anthropic tool in `input_schema`).

    >>> function_tool({"name": "f", "input_schema": {}}, "tools[0]", "input_schema", True)
    {'type': 'function', 'function': {'name': 'f', 'parameters': {}}}
    """
    fn: dict[str, Any] = {"name": take(source, "name", "string", where, required=True)}
    description = take(source, "description", "string", where)
    if description is not None:
        fn["description"] = description
    schema = take(source, schema_key, "object", where, required=schema_required)
    if schema is not None:
        fn["parameters"] = schema
    return {"type": "function", "function": fn}


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    """The function names of tools built by `function_tool`."""
    return [t["function"]["name"] for t in tools or ()]
