"""The request file: one OpenAI chat-completions body per line (K2-Vendor-Verifier's format).

Each line is read, checked and prepared the way K2VV's `ToolCallsValidator.read_jsonl` /
`prepare_request` do (MoonshotAI/K2-Vendor-Verifier @ 0bc5061b): role `_input` becomes
`system`, `model` is set, --temperature/--max-tokens override, a streamed request asks for
usage (`stream_options.include_usage`), `data_index` is the 1-based line number and `hash` the
MD5 of the prepared body as sorted JSON, so a K2VV results file resumes here and back.

Ours: a line that is not a usable request (not JSON, no messages, a malformed tool, more than
MAX_TOOLS tools, longer than MAX_LINE_BYTES, a parameters schema that is not a JSON Schema) is
named by its line number and skipped; K2VV logs only the JSON errors and sends the rest.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema.exceptions import SchemaError

from k2trt.errors import K2Error
from k2trt.evaluate.metrics import schema_validator

ROLE_INPUT, ROLE_SYSTEM = "_input", "system"
MAX_TOOLS = 512  # tools in one request; past it the line is refused (bounded validation time)
MAX_LINE_BYTES = 8 << 20  # the gateway's default body limit (`k2trt serve --max-body-bytes`)


@dataclass(frozen=True)
class Sample:
    """One request of the file: its line number, the body as written and as sent, its hash."""

    data_index: int
    raw: dict[str, Any]
    prepared: dict[str, Any]
    hash: str

    @property
    def tools(self) -> list[dict[str, Any]]:
        tools = self.raw.get("tools")
        return tools if isinstance(tools, list) else []


@dataclass(frozen=True)
class BadLine:
    """A line that is not a usable request, and why (one line)."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class Overrides:
    """What the command line sets on every request (None: leave the request's own)."""

    model: str
    temperature: float | None = None
    max_tokens: int | None = None


def compute_hash(body: dict[str, Any]) -> str:
    """K2VV's request hash: MD5 of the body as JSON with sorted keys, non-ASCII kept.

    >>> compute_hash({"b": 1, "a": "é"}) == compute_hash({"a": "é", "b": 1})
    True
    >>> compute_hash({"b": 1, "a": "é"})
    '955e058c1278add29222ebfdafa6b5f5'
    """
    text = json.dumps(body, sort_keys=True, ensure_ascii=False)
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def prepare(raw: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """The body as sent (a copy; `raw` is left as written).

    >>> prepare({"messages": [{"role": "_input", "content": "x"}], "stream": True},
    ...         Overrides("kimi-k2"))  # doctest: +NORMALIZE_WHITESPACE
    {'messages': [{'role': 'system', 'content': 'x'}], 'stream': True, 'model': 'kimi-k2',
     'stream_options': {'include_usage': True}}
    """
    body = copy.deepcopy(raw)
    for message in body.get("messages", []):
        if message.get("role") == ROLE_INPUT:
            message["role"] = ROLE_SYSTEM
    body["model"] = overrides.model
    if overrides.temperature is not None:
        body["temperature"] = overrides.temperature
    if overrides.max_tokens is not None:
        body["max_tokens"] = overrides.max_tokens
    if body.get("stream", False):
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        options.setdefault("include_usage", True)
        body["stream_options"] = options
    return body


def problem(raw: Any) -> str | None:
    """Why a parsed line is not a usable request, or None.

    >>> problem({"messages": []})
    'messages: expected a non-empty list of message objects'
    >>> problem({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})
    'tools[0].function: expected an object with a string name'
    """
    if not isinstance(raw, dict):
        return f"expected a JSON object (a chat request), got {type(raw).__name__}"
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: expected a non-empty list of message objects"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages[{i}]: expected an object with a string role"
    if "stream" in raw and not isinstance(raw["stream"], bool):
        return f"stream: expected true or false, got {raw['stream']!r}"[:200]
    return tools_problem(raw.get("tools"))


def tools_problem(tools: Any) -> str | None:
    """Why `tools` is not a list of OpenAI function tools with JSON Schema parameters, or None."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "tools: expected a list of tool objects"
    if len(tools) > MAX_TOOLS:
        return f"tools: {len(tools)} tools, more than the limit of {MAX_TOOLS}"
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return f"tools[{i}].function: expected an object with a string name"
        schema = function.get("parameters", {})
        if not isinstance(schema, dict):
            return f"tools[{i}].function.parameters: expected a JSON Schema object"
        try:
            schema_validator(schema)
        except SchemaError as err:
            return f"tools[{i}].function.parameters: not a valid JSON Schema: {err.message}"[:300]
    return None


def parse_line(number: int, line: bytes, overrides: Overrides) -> Sample | BadLine:
    """One line of the file as a Sample, or a BadLine saying why not."""
    if len(line) > MAX_LINE_BYTES:
        return BadLine(number, f"{len(line)} bytes, more than the limit of {MAX_LINE_BYTES}")
    try:
        raw = json.loads(line)
    except (UnicodeDecodeError, ValueError) as err:
        return BadLine(number, f"not JSON: {err}"[:300])
    why = problem(raw)
    if why is not None:
        return BadLine(number, why)
    body = prepare(raw, overrides)
    return Sample(number, raw, body, compute_hash(body))


def read_samples(path: Path, overrides: Overrides) -> tuple[list[Sample], list[BadLine]]:
    """Every request of the file (blank lines skipped, as K2VV does) and every bad line."""
    samples: list[Sample] = []
    bad: list[BadLine] = []
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parsed = parse_line(number, line.strip(), overrides)
                if isinstance(parsed, Sample):
                    samples.append(parsed)
                else:
                    bad.append(parsed)
    except FileNotFoundError:
        raise K2Error("no such request file", path=path) from None
    except OSError as err:
        raise K2Error(f"cannot read the request file: {err.strerror}", path=path) from None
    return samples, bad
