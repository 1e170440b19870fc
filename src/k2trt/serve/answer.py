"""What both APIs need from a finished or streaming answer: an accumulator of chunk deltas."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from k2trt.runtime.types import ChatChunk, ChatRequest


@dataclass(frozen=True)
class ParsedChat:
    """A validated API request: the backend request and how to answer it."""

    request: ChatRequest
    stream: bool = False
    include_usage: bool = False  # OpenAI stream_options.include_usage


@dataclass
class Answer:
    """Chunks folded into one message: content, tool calls (by stream index), finish, usage.

    >>> a = Answer()
    >>> a.add(ChatChunk(tool_calls=[{"index": 0, "id": "functions.f:0", "type": "function",
    ...     "function": {"name": "f", "arguments": ""}}]))
    >>> a.add(ChatChunk(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}],
    ...     finish_reason="tool_calls", prompt_tokens=5, completion_tokens=2))
    >>> a.tool_calls()
    [{'id': 'functions.f:0', 'type': 'function', 'function': {'name': 'f', 'arguments': '{}'}}]
    """

    parts: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stop_sequence: str | None = None  # the stop string that ended the answer, if one did

    def add(self, chunk: ChatChunk) -> None:
        """Fold one chunk in."""
        if chunk.content:
            self.parts.append(chunk.content)
        for delta in chunk.tool_calls:
            call = self.calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": []})
            fn = delta.get("function") or {}
            if delta.get("id"):
                call["id"] = delta["id"]
            if fn.get("name"):
                call["name"] = fn["name"]
            if fn.get("arguments"):
                call["arguments"].append(fn["arguments"])
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
            self.prompt_tokens = chunk.prompt_tokens
            self.completion_tokens = chunk.completion_tokens
            self.stop_sequence = chunk.stop_sequence

    @property
    def content(self) -> str:
        return "".join(self.parts)

    def tool_calls(self) -> list[dict[str, Any]]:
        """OpenAI `message.tool_calls`, in stream order."""
        return [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": "".join(c["arguments"])},
            }
            for _, c in sorted(self.calls.items())
        ]


# One encoder for every call: json.dumps with options builds a new JSONEncoder each time,
# which was a third of the gateway's cost per streamed token.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    """Compact JSON, UTF-8 kept as is (what goes on the wire).

    >>> dumps({"a": ["é", 1]})
    '{"a":["é",1]}'
    """
    return _ENCODER.encode(obj)


# A JSON string literal, as `dumps(text)` writes it (C-accelerated, no encoder object):
# `dumps_str('say "é"') == dumps('say "é"')`.
dumps_str: Callable[[str], str] = json.encoder.encode_basestring
