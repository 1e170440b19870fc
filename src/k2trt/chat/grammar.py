"""Schema-constrained tool calls: tools + tool_choice -> a structural tag for the engine's mask.

This module is the pure half (no xgrammar import): it decides whether a request is
constrained, checks the tool schemas, and writes the xgrammar structural tag (JSON) that
describes Kimi K2's tool-call format *after* the assistant text `tool_choice` already forced
into the prompt (`k2trt.runtime.chat.prefill_text`):

- ``"auto"``: free text (no tool markers), then optionally one section
  ``<|tool_calls_section_begin|>`` (call)+ ``<|tool_calls_section_end|>``, then the end.
- ``"required"`` (the prompt ends with the section begin): (call)+ then the section end.
- named (the prompt ends with ``...functions.N:0<|tool_call_argument_begin|>``): N's
  arguments, ``<|tool_call_end|><|tool_calls_section_end|>``.

A call is ``<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{json}
<|tool_call_end|>`` with NAME one of the declared tools and the JSON matching its
``parameters``. The five markers are matched as their token ids (TokenFormat), never as text,
and the token table `grammar_engine` gives xgrammar makes them unreachable inside free text
and JSON strings, so a marker can only appear where the format puts one.

Modes (`k2trt serve --tool-grammar`): ``off`` never constrains; ``auto`` constrains when tools
are declared, tool_choice is not "none" and not every tool says ``"strict": false``;
``strict`` constrains like auto and treats every tool as ``"strict": true``. A tool with
``"strict": true`` must use only the keywords xgrammar enforces (`ENFORCED`, measured): any
other keyword is a `SchemaRejected` (HTTP 400) naming the tool and the keyword. Without strict,
unenforced keywords are relaxed (the grammar accepts more than the schema). A tool with
``"strict": false`` gets any JSON object as arguments (its name and the format still hold).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from k2trt.chat.toolcalls import declared_function
from k2trt.errors import K2Error

MODES = ("off", "auto", "strict")
SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
MARKERS = (SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARGUMENT_BEGIN, CALL_END)

# Limits: past them a request is refused (400), so compile time and memory stay bounded.
MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 256 << 10  # all tools' parameters, as compact JSON
MAX_SCHEMA_DEPTH = 16  # nested subschemas
MAX_REPEAT = 4096  # maxLength / maxItems / maxProperties / minX values
CALL_INDEX = "[0-9]{1,4}"  # the :IDX of a call id
# Runs of JSON whitespace in arguments: bounded, as xgrammar advises, so a model cannot spend
# its whole budget on blanks (Kimi writes compact JSON; pretty-printed nesting still fits).
MAX_WHITESPACE = 16

# JSON Schema keywords xgrammar 0.2.9 enforces (measured: tests/test_grammar.py compiles a
# schema with each and checks a violating instance is refused) plus annotations, which
# constrain nothing. Anything else is relaxed without strict and refused with it.
ENFORCED = frozenset(
    [
        *("type", "enum", "const", "anyOf", "$ref", "$defs", "definitions"),
        *("properties", "required", "additionalProperties", "patternProperties"),
        *("propertyNames", "minProperties", "maxProperties"),
        *("items", "prefixItems", "minItems", "maxItems"),
        *("minLength", "maxLength", "pattern", "format"),
        *("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    ]
)
ANNOTATIONS = frozenset(
    [
        *("title", "description", "default", "examples", "$schema", "$id", "$comment"),
        *("deprecated", "readOnly", "writeOnly"),
    ]
)
# Where subschemas live: keyword -> "one" | "map" | "list".
_SUBSCHEMAS = {
    "items": "one",
    "additionalProperties": "one",
    "propertyNames": "one",
    "not": "one",
    "if": "one",
    "then": "one",
    "else": "one",
    "contains": "one",
    "unevaluatedProperties": "one",
    "unevaluatedItems": "one",
    "properties": "map",
    "patternProperties": "map",
    "$defs": "map",
    "definitions": "map",
    "dependentSchemas": "map",
    "anyOf": "list",
    "allOf": "list",
    "oneOf": "list",
    "prefixItems": "list",
}
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}


class SchemaRejected(K2Error):
    """A tool's schema cannot be used for constrained decoding (HTTP 400 on `field`)."""

    def __init__(self, message: str, field: str = "tools") -> None:
        super().__init__(message)
        self.field = field


class GrammarFailed(K2Error):
    """Constrained decoding failed while generating: that request ends, the server lives."""


@dataclass(frozen=True)
class ToolFunction:
    """One declared function: name, arguments schema (None: any object), strict flag."""

    name: str
    parameters: dict[str, Any] | None
    strict: bool | None


@dataclass(frozen=True)
class GrammarSpec:
    """A constrained request: the structural tag (JSON text) and its cache key (sha256)."""

    tag: str
    key: str
    tools: int


def check_mode(mode: str) -> str:
    """The mode itself, or K2Error listing the valid ones.

    >>> check_mode("auto")
    'auto'
    """
    if mode not in MODES:
        raise K2Error(f"--tool-grammar must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def functions_of(tools: Sequence[Any] | None) -> list[ToolFunction]:
    """The declared functions (OpenAI `{"type": "function", "function": {...}}` or bare).

    >>> functions_of([{"type": "function", "function": {"name": "f", "strict": True}}])
    [ToolFunction(name='f', parameters=None, strict=True)]
    """
    out = []
    seen: set[str] = set()
    for i, tool in enumerate(tools or ()):
        found = declared_function(tool)
        if found is None:
            raise SchemaRejected(f"tools[{i}] needs a function name")
        fn, name = found
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise SchemaRejected(f"tools[{i}] ({name}): parameters must be a JSON object")
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise SchemaRejected(f"tools[{i}] ({name}): strict must be a boolean")
        if name in seen:
            raise SchemaRejected(f"tools[{i}] ({name}): a second tool of that name")
        seen.add(name)
        out.append(ToolFunction(name, params, strict))
    return out


def _forced_name(tool_choice: Any) -> str | None:
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        return name if isinstance(name, str) else None
    return None


def spec_for(
    tools: Sequence[Any] | None,
    tool_choice: Any,
    mode: str,
    marker_ids: Mapping[str, int],
) -> GrammarSpec | None:
    """The grammar for one request, or None when it is not constrained (see module doc).

    `marker_ids` maps the five tool-call markers to their token ids (the tokenizer's
    `tool_marker_ids`): the tag names them by id, as every tokenizer table agrees on ids.

    >>> ids = dict(zip(MARKERS, range(5)))
    >>> spec_for([{"function": {"name": "f"}}], "required", "auto", ids).tools
    1
    >>> spec_for([{"function": {"name": "f"}}], "none", "auto", ids) is None
    True
    """
    check_mode(mode)
    if mode == "off" or not tools or tool_choice == "none":
        return None
    functions = functions_of(tools)
    if len(functions) > MAX_TOOLS:
        raise SchemaRejected(
            f"{len(functions)} tools; constrained tool calls take at most {MAX_TOOLS} "
            '(send fewer, or mark them "strict": false)'
        )
    if mode == "auto" and all(f.strict is False for f in functions):
        return None  # the request opted out
    schemas = [_arguments_schema(i, f, mode) for i, f in enumerate(functions)]
    size = len(json.dumps(schemas, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        raise SchemaRejected(
            f"tool schemas take {size} bytes; constrained tool calls take at most "
            f"{MAX_SCHEMA_BYTES}"
        )
    by_name = dict(zip((f.name for f in functions), schemas, strict=True))
    forced = _forced_name(tool_choice)
    if forced is not None:
        if forced not in by_name:
            raise SchemaRejected(
                f"tool_choice names {forced!r}, not among the tools", "tool_choice"
            )
        fmt = _forced_format(by_name[forced])
    elif tool_choice == "required":
        fmt = _sequence([{"type": "plus", "content": _call_tag(by_name)}, _token(SECTION_END)])
    else:
        fmt = _auto_format(by_name)
    missing = [m for m in MARKERS if m not in marker_ids]
    if missing:
        raise K2Error(f"tokenizer has no {missing[0]} token: cannot constrain tool calls")
    fmt = _with_ids(fmt, marker_ids)
    # Not sort_keys: xgrammar emits properties in the order the schema declares them.
    tag = json.dumps({"type": "structural_tag", "format": fmt})
    return GrammarSpec(tag, hashlib.sha256(tag.encode()).hexdigest(), len(functions))


def _arguments_schema(index: int, fn: ToolFunction, mode: str) -> Any:
    strict = True if mode == "strict" and fn.strict is None else fn.strict
    if strict is False or fn.parameters is None:
        return ANY_OBJECT
    where = f"tools[{index}] ({fn.name})"
    check_schema(fn.parameters, where, strict=bool(strict))
    return fn.parameters


def check_schema(schema: Any, where: str, strict: bool, path: str = "parameters") -> None:
    """Refuse what cannot be a JSON schema; under `strict` also keywords not enforced.

    >>> check_schema({"type": "object", "not": {}}, "tools[0] (f)", strict=True)
    Traceback (most recent call last):
    k2trt.chat.grammar.SchemaRejected: tools[0] (f): parameters: keyword 'not' is not supported \
under strict (constrained decoding cannot enforce it)
    """
    _walk(schema, where, strict, path, 0)


def _walk(schema: Any, where: str, strict: bool, path: str, depth: int) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise SchemaRejected(f"{where}: {path}: a schema must be an object or a boolean")
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaRejected(f"{where}: {path}: nested deeper than {MAX_SCHEMA_DEPTH} schemas")
    for key, value in schema.items():
        here = f"{path}.{key}"
        _check_value(key, value, where, here)
        if strict and key not in ENFORCED and key not in ANNOTATIONS and not key.startswith("x-"):
            raise SchemaRejected(
                f"{where}: {path}: keyword {key!r} is not supported under strict "
                "(constrained decoding cannot enforce it)"
            )
        kind = _SUBSCHEMAS.get(key)
        if kind == "one":
            _walk(value, where, strict, here, depth + 1)
        elif kind == "map":
            if not isinstance(value, dict):
                raise SchemaRejected(f"{where}: {here}: must be an object of schemas")
            for name, sub in value.items():
                _walk(sub, where, strict, f"{here}.{name}", depth + 1)
        elif kind == "list":
            if not isinstance(value, list) or not value:
                raise SchemaRejected(f"{where}: {here}: must be a non-empty array of schemas")
            for i, sub in enumerate(value):
                _walk(sub, where, strict, f"{here}[{i}]", depth + 1)


def _check_value(key: str, value: Any, where: str, here: str) -> None:
    if key == "type":
        types = value if isinstance(value, list) else [value]
        bad = [t for t in types if t not in JSON_TYPES]
        if bad or not types:
            raise SchemaRejected(
                f"{where}: {here}: {bad[0] if bad else value!r} is not a JSON type"
            )
    elif key == "required":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SchemaRejected(f"{where}: {here}: must be an array of property names")
    elif key == "enum":
        if not isinstance(value, list) or not value:
            raise SchemaRejected(f"{where}: {here}: must be a non-empty array")
    elif key in _COUNTS and (
        isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPEAT
    ):
        raise SchemaRejected(f"{where}: {here}: expected an integer in 0..{MAX_REPEAT}")


# ---------------------------------------------------------------------------------------------
# The structural tag (xgrammar's JSON format; field names as in xgrammar.structural_tag)


def _token(marker: str) -> dict[str, Any]:
    return {"type": "token", "token": marker}


def _sequence(elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "sequence", "elements": elements}


def _arguments(schema: Any) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": bounded_strings(schema),
        "max_whitespace_cnt": MAX_WHITESPACE,
    }


def bounded_strings(schema: Any) -> Any:
    r"""`schema` with each length-bounded plain string turned into an equivalent `pattern`.

    Why: xgrammar 0.2.9 lets raw control characters (U+0000-U+001F but newline) into strings
    with minLength/maxLength, which no JSON parser reads back (measured in
    tests/test_grammar.py). The pattern allows the same lengths of characters other than
    controls, quotes and backslashes: a subset of what the schema allows (no escapes there).

    >>> print(bounded_strings({"type": "string", "maxLength": 3})["pattern"])
    ^[^\x00-\x1f"\\]{0,3}$
    """
    if isinstance(schema, list):
        return [bounded_strings(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        kind = _SUBSCHEMAS.get(key)
        if kind == "map" and isinstance(value, dict):
            out[key] = {k: bounded_strings(v) for k, v in value.items()}
        elif kind in ("one", "list"):
            out[key] = bounded_strings(value)
        else:
            out[key] = value
    lengths = ("minLength" in out) or ("maxLength" in out)
    other = any(k in out for k in ("pattern", "format", "enum", "const"))
    types = out.get("type")
    stringy = types == "string" or (isinstance(types, list) and "string" in types)
    if stringy and lengths and not other:
        low, high = out.pop("minLength", 0), out.pop("maxLength", None)
        count = f"{{{low},{'' if high is None else high}}}"
        out["pattern"] = f'^[^\\x00-\\x1f"\\\\]{count}$'
    return out


def _call_tag(by_name: Mapping[str, Any]) -> dict[str, Any]:
    """One call: begin marker, `functions.NAME:IDX`, argument marker, JSON, end marker."""
    bodies = [
        _sequence(
            [
                {"type": "const_string", "value": f"functions.{name}:"},
                {"type": "regex", "pattern": CALL_INDEX},
                _token(ARGUMENT_BEGIN),
                _arguments(schema),
            ]
        )
        for name, schema in by_name.items()
    ]
    content = bodies[0] if len(bodies) == 1 else {"type": "or", "elements": bodies}
    return {"type": "tag", "begin": _token(CALL_BEGIN), "content": content, "end": _token(CALL_END)}


def _with_ids(node: Any, ids: Mapping[str, int]) -> Any:
    """The format with every marker string in token positions replaced by its id."""
    if isinstance(node, list):
        return [_with_ids(n, ids) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _with_ids(v, ids) for k, v in node.items() if k != "json_schema"}
    if "json_schema" in node:
        out["json_schema"] = node["json_schema"]  # user data: never rewritten
    if node.get("type") == "token":
        out["token"] = ids[node["token"]]
    for key in ("trigger_tokens", "exclude_tokens"):
        if key in node:
            out[key] = [ids[m] for m in node[key]]
    return out


def _forced_format(schema: Any) -> dict[str, Any]:
    return _sequence([_arguments(schema), _token(CALL_END), _token(SECTION_END)])


def _auto_format(by_name: Mapping[str, Any]) -> dict[str, Any]:
    section = {
        "type": "tag",
        "begin": _token(SECTION_BEGIN),
        "content": {"type": "plus", "content": _call_tag(by_name)},
        "end": _token(SECTION_END),
    }
    return {
        "type": "token_triggered_tags",
        "trigger_tokens": [SECTION_BEGIN],
        "tags": [section],
        "exclude_tokens": [m for m in MARKERS if m != SECTION_BEGIN],
        "at_least_one": False,
        "stop_after_first": True,
    }
