"""Anthropic Messages: request bodies to `ChatRequest`, chunks to messages and stream events.

Mapping (the model sees OpenAI-shaped messages rendered by its chat template):

- `system` (a string or text blocks) -> a system message first;
- user `tool_result` blocks -> `tool` messages (`tool_call_id` = `tool_use_id`; an
  `is_error` result is prefixed "Error: "), user text blocks -> user messages, in order;
- assistant `text` + `tool_use` blocks -> one assistant message with `tool_calls` (input as
  JSON arguments); `thinking` blocks are dropped;
- `tools[].input_schema` -> function `parameters`; `tool_choice` auto/any/tool/none ->
  auto/required/named/none;
- `temperature` (0..1, default 1) x 0.6: Kimi's recommended 0.6 at Anthropic's default 1.0;
  `top_k` is accepted and ignored; `stop_sequences` -> stop strings.

Answers: stop_reason `end_turn` / `max_tokens` / `tool_use`, or `stop_sequence` with
`stop_sequence` naming the one of `stop_sequences` that ended the turn (even inside a tool
call: the call is cut there, so the turn is not a finished `tool_use`). A tool call whose
arguments are not a JSON object is returned as `{"raw_arguments": TEXT}` (non-streamed) so
nothing is lost; streamed, the argument text goes out as `input_json_delta` pieces as
generated.
"""

from __future__ import annotations

import json
from typing import Any

from k2trt.runtime.types import ChatChunk, ChatRequest, ToolChoice
from k2trt.serve.answer import Answer, ParsedChat, dumps, dumps_str
from k2trt.serve.checks import (
    at,
    expect,
    function_tool,
    in_range,
    joined_text,
    objects,
    one_of,
    strings,
    take,
    text_of,
    tool_names,
    typed_objects,
)
from k2trt.serve.errors import ApiError, anthropic_error, invalid

TEMPERATURE_SCALE = 0.6  # real temperature = request temperature x 0.6 (Moonshot's mapping)
DEFAULT_TEMPERATURE = 1.0  # Anthropic's default, i.e. 0.6 for the model
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
SKIPPED_BLOCKS = ("thinking", "redacted_thinking")


# ---------------------------------------------------------------------------------------------
# Requests


def parse_messages(body: Any) -> ParsedChat:
    """A validated Messages body; ApiError 400 names the first field at fault.

    >>> p = parse_messages({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
    >>> p.request.temperature, p.request.max_tokens
    (0.6, 8)
    """
    body = expect(body, "object", "body")
    max_tokens = take(body, "max_tokens", "integer", required=True)
    if max_tokens < 1:
        raise invalid("max_tokens", f"expected at least 1, got {max_tokens}")
    raw = take(body, "messages", "array", required=True)
    if not raw:
        raise invalid("messages", "must hold at least one message")
    messages = _system(body.get("system"))
    for i, item in enumerate(raw):
        messages += _message(item, at("messages", i))
    tools = _tools(body)
    temperature = take(body, "temperature", "number")
    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    top_p = take(body, "top_p", "number")
    take(body, "top_k", "integer")
    take(body, "model", "string")
    stops = body.get("stop_sequences")
    request = ChatRequest(
        messages=messages,
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), tools),
        max_tokens=max_tokens,
        temperature=TEMPERATURE_SCALE * in_range(temperature, "temperature", 0.0, 1.0),
        top_p=1.0 if top_p is None else float(in_range(top_p, "top_p", 0.0, 1.0, True)),
        stop=()
        if stops is None
        else strings(expect(stops, "array", "stop_sequences"), "stop_sequences"),
    )
    return ParsedChat(request, bool(take(body, "stream", "boolean")))


def _system(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    return [{"role": "system", "content": joined_text(raw, "system", "blocks")}]


def _message(raw: Any, where: str) -> list[dict[str, Any]]:
    msg = expect(raw, "object", where)
    role = one_of(
        take(msg, "role", "string", where, required=True), ("user", "assistant"), at(where, "role")
    )
    content = msg.get("content")
    if content is None:
        raise invalid(at(where, "content"), "required (a string or an array of blocks)")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = expect(content, "array", at(where, "content"))
    out = _user_blocks(blocks, where) if role == "user" else [_assistant_blocks(blocks, where)]
    if not out:
        raise invalid(at(where, "content"), "must hold at least one block")
    return out


def _user_blocks(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """Text blocks become user messages, tool results tool messages, in their order."""
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    for here, block, kind in typed_objects(blocks, at(where, "content")):
        if kind == "text":
            texts.append(text_of(block, here))
            continue
        if kind != "tool_result":
            raise invalid(at(here, "type"), f"expected text or tool_result, got {kind!r}")
        if texts:
            out.append({"role": "user", "content": "".join(texts)})
            texts = []
        result = block.get("content")
        text = "" if result is None else joined_text(result, at(here, "content"), "blocks")
        if take(block, "is_error", "boolean", here):
            text = f"Error: {text}"
        call_id = take(block, "tool_use_id", "string", here, required=True)
        out.append({"role": "tool", "tool_call_id": call_id, "content": text})
    if texts:
        out.append({"role": "user", "content": "".join(texts)})
    return out


def _assistant_blocks(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for here, block, kind in typed_objects(blocks, at(where, "content")):
        if kind == "text":
            texts.append(text_of(block, here))
        elif kind == "tool_use":
            arguments = json.dumps(
                take(block, "input", "object", here, required=True), ensure_ascii=False
            )
            calls.append(
                {
                    "id": take(block, "id", "string", here, required=True),
                    "type": "function",
                    "function": {
                        "name": take(block, "name", "string", here, required=True),
                        "arguments": arguments,
                    },
                }
            )
        elif kind not in SKIPPED_BLOCKS:
            raise invalid(at(here, "type"), f"expected text or tool_use, got {kind!r}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    raw = take(body, "tools", "array")
    return None if raw is None else [_tool(tool, here) for here, tool in objects(raw, "tools")]


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    kind = take(tool, "type", "string", where)
    if kind not in (None, "custom"):
        raise invalid(at(where, "type"), f"only custom tools are supported, got {kind!r}")
    return function_tool(tool, where, "input_schema", schema_required=True)


def _tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> ToolChoice:
    if raw is None:
        return "auto"
    choice = expect(raw, "object", "tool_choice")
    kind = one_of(
        take(choice, "type", "string", "tool_choice", required=True),
        TOOL_CHOICE_TYPES,
        "tool_choice.type",
    )
    names = tool_names(tools)
    if kind in ("any", "tool") and not names:
        raise invalid("tool_choice", f"type {kind!r} needs at least one tool in tools")
    if kind != "tool":
        return {"auto": "auto", "any": "required", "none": "none"}[kind]
    name = take(choice, "name", "string", "tool_choice", required=True)
    if name not in names:
        raise invalid("tool_choice.name", f"no tool named {name!r} in tools")
    return {"type": "function", "function": {"name": name}}


# ---------------------------------------------------------------------------------------------
# Responses


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool_use `input`: the arguments object, or `{"raw_arguments": text}` if not one.

    >>> tool_input('{"city": "Paris"}'), tool_input("{oops")
    ({'city': 'Paris'}, {'raw_arguments': '{oops'})
    """
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"raw_arguments": arguments}


def _usage(answer: Answer) -> dict[str, int]:
    return {"input_tokens": answer.prompt_tokens, "output_tokens": answer.completion_tokens}


def stop_fields(finish_reason: str | None, stop_sequence: str | None) -> dict[str, Any]:
    """`stop_reason` and `stop_sequence` of a finished answer.

    >>> stop_fields("stop", "END")
    {'stop_reason': 'stop_sequence', 'stop_sequence': 'END'}
    >>> stop_fields("tool_calls", None)
    {'stop_reason': 'tool_use', 'stop_sequence': None}
    """
    if stop_sequence:
        return {"stop_reason": "stop_sequence", "stop_sequence": stop_sequence}
    return {
        "stop_reason": STOP_REASONS.get(finish_reason or "stop", "end_turn"),
        "stop_sequence": None,
    }


def message(message_id: str, model: str, answer: Answer) -> dict[str, Any]:
    """The non-streamed Messages response."""
    content: list[dict[str, Any]] = []
    if answer.content:
        content.append({"type": "text", "text": answer.content})
    for call in answer.tool_calls():
        fn = call["function"]
        block = {"type": "tool_use", "id": call["id"], "name": fn["name"]}
        content.append({**block, "input": tool_input(fn["arguments"])})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        **stop_fields(answer.finish_reason, answer.stop_sequence),
        "usage": _usage(answer),
    }


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {dumps(data)}\n\n".encode()


class EventWriter:
    """The Messages stream: message_start, then per block content_block_start / delta /
    stop (text_delta or input_json_delta), then message_delta (stop_reason, usage) and
    message_stop."""

    def __init__(self, message_id: str, model: str) -> None:
        self._id = message_id
        self._model = model
        self._block = -1  # index of the open content block (-1: none yet)
        self._open: str | None = None  # "text" or "tool" while a block is open
        self._text_head = b""
        self.answer = Answer()

    def start(self, prompt_tokens: int = 0) -> bytes:
        """message_start, with the prompt's size when the backend gave it on its first chunk
        (output tokens come in message_delta), and a ping."""
        msg = message(self._id, self._model, Answer(prompt_tokens=prompt_tokens))
        msg.update(content=[], stop_reason=None)
        return _event("message_start", {"type": "message_start", "message": msg}) + _event(
            "ping", {"type": "ping"}
        )

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _begin(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return out + _event("content_block_start", start)

    def _text(self, text: str) -> bytes:
        out = b""
        if self._open != "text":
            out = self._begin("text", {"type": "text", "text": ""})
            self._text_head = (
                'event: content_block_delta\ndata: {"type":"content_block_delta",'
                f'"index":{self._block},"delta":{{"type":"text_delta","text":'
            ).encode()
        return out + self._text_head + dumps_str(text).encode() + b"}}\n\n"

    def _tool(self, delta: dict[str, Any]) -> bytes:
        out = b""
        fn = delta.get("function") or {}
        if delta.get("id"):
            block = {"type": "tool_use", "id": delta["id"], "name": fn.get("name", ""), "input": {}}
            out = self._begin("tool", block)
        if fn.get("arguments"):
            piece = {"type": "input_json_delta", "partial_json": fn["arguments"]}
            data = {"type": "content_block_delta", "index": self._block, "delta": piece}
            out += _event("content_block_delta", data)
        return out

    def feed(self, chunk: ChatChunk) -> bytes:
        """Events for one backend chunk; the last one ends the message."""
        self.answer.add(chunk)
        out = self._text(chunk.content) if chunk.content else b""
        for delta in chunk.tool_calls:
            out += self._tool(delta)
        if chunk.finish_reason is None:
            return out
        end = {
            "type": "message_delta",
            "delta": stop_fields(chunk.finish_reason, chunk.stop_sequence),
            "usage": _usage(self.answer),
        }
        return (
            out
            + self._close()
            + _event("message_delta", end)
            + _event("message_stop", {"type": "message_stop"})
        )

    def fail(self, err: ApiError) -> bytes:
        """An error after the stream began: Anthropic's `error` event."""
        return _event("error", anthropic_error(err))
