"""OpenAI chat completions: request bodies to `ChatRequest`, chunks to responses and SSE.

Accepted fields: model (any string: the served model answers), messages (system, developer
(= system), user, assistant with tool_calls, tool), tools, tool_choice, max_tokens /
max_completion_tokens, temperature (default 0.6, Kimi's recommendation), top_p, seed, stop,
stream, stream_options.include_usage, n (1 only). Other fields are ignored; logprobs is
refused. Content may be a string or a list of text parts (joined).
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
    tool_names,
)
from k2trt.serve.errors import ApiError, invalid, openai_error

DEFAULT_TEMPERATURE = 0.6
# OpenAI role -> the role the chat template knows
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
TOOL_CHOICES = ("auto", "none", "required")
SEED_MAX = 2**63 - 1


# ---------------------------------------------------------------------------------------------
# Requests


def parse_chat(body: Any) -> ParsedChat:
    """A validated chat-completions body; ApiError 400 names the first field at fault.

    >>> parse_chat({"messages": [{"role": "user", "content": "hi"}]}).request.temperature
    0.6
    """
    body = expect(body, "object", "body")
    raw = take(body, "messages", "array", required=True)
    if not raw:
        raise invalid("messages", "must hold at least one message")
    messages = [_message(m, at("messages", i)) for i, m in enumerate(raw)]
    tools = _tools(body)
    _unsupported(body)
    stream = bool(take(body, "stream", "boolean"))
    options = take(body, "stream_options", "object") or {}
    limit = take(body, "max_completion_tokens", "integer")
    key = "max_completion_tokens"
    if limit is None:
        limit, key = take(body, "max_tokens", "integer"), "max_tokens"
    if limit is not None and limit < 1:
        raise invalid(key, f"expected at least 1, got {limit}")
    take(body, "model", "string")
    request = ChatRequest(
        messages=messages,
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), tools),
        max_tokens=limit,
        temperature=_number(body, "temperature", DEFAULT_TEMPERATURE, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=_seed(body),
        stop=() if body.get("stop") is None else strings(body["stop"], "stop"),
    )
    include_usage = bool(take(options, "include_usage", "boolean", "stream_options"))
    return ParsedChat(request, stream, include_usage)


def _unsupported(body: dict[str, Any]) -> None:
    n = take(body, "n", "integer")
    if n is not None and n != 1:
        raise invalid("n", f"only 1 choice per request is supported, got {n}")
    if take(body, "logprobs", "boolean"):
        raise invalid("logprobs", "not supported")


def _seed(body: dict[str, Any]) -> int | None:
    """A seed the engines take: Triton's INT64 tensor and TensorRT-LLM's unsigned seed."""
    seed = take(body, "seed", "integer")
    return None if seed is None else int(in_range(seed, "seed", 0, SEED_MAX))


def _number(
    body: dict[str, Any], key: str, default: float, low: float, high: float, low_open: bool = False
) -> float:
    value = take(body, key, "number")
    return default if value is None else float(in_range(value, key, low, high, low_open))


def _message(raw: Any, where: str) -> dict[str, Any]:
    """One message, rebuilt from the fields the chat template reads (nothing else passes)."""
    msg = expect(raw, "object", where)
    role = one_of(
        take(msg, "role", "string", where, required=True), tuple(ROLES), at(where, "role")
    )
    out: dict[str, Any] = {"role": ROLES[role]}
    name = take(msg, "name", "string", where)
    if name:
        out["name"] = name
    calls = _tool_calls(msg, where) if role == "assistant" else []
    content = msg.get("content")
    if content is None and not calls:
        raise invalid(at(where, "content"), "required (a string or a list of text parts)")
    out["content"] = "" if content is None else joined_text(content, at(where, "content"), "parts")
    if calls:
        out["tool_calls"] = calls
    if role == "tool":
        out["tool_call_id"] = take(msg, "tool_call_id", "string", where, required=True)
    return out


def _tool_calls(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    raw = take(msg, "tool_calls", "array", where)
    calls = []
    for here, call in objects(raw or [], at(where, "tool_calls")):
        fn = take(call, "function", "object", here, required=True)
        args = fn.get("arguments", "")
        if isinstance(args, dict):  # lenient: some clients send the object itself
            args = json.dumps(args, ensure_ascii=False)
        calls.append(
            {
                "id": take(call, "id", "string", here, required=True),
                "type": "function",
                "function": {
                    "name": take(fn, "name", "string", at(here, "function"), required=True),
                    "arguments": expect(args, "string", at(at(here, "function"), "arguments")),
                },
            }
        )
    return calls


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    raw = take(body, "tools", "array")
    return None if raw is None else [_tool(tool, here) for here, tool in objects(raw, "tools")]


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    one_of(take(tool, "type", "string", where) or "function", ("function",), at(where, "type"))
    fn = take(tool, "function", "object", where, required=True)
    out = function_tool(fn, at(where, "function"), "parameters")
    strict = take(fn, "strict", "boolean", at(where, "function"))
    if strict is not None:  # OpenAI's per-function flag: the tool grammar honours it
        out["function"]["strict"] = strict
    return out


def _tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> ToolChoice:
    if raw is None:
        return "auto"
    names = tool_names(tools)
    if isinstance(raw, str):
        choice = one_of(raw, TOOL_CHOICES, "tool_choice")
        if choice == "required" and not names:
            raise invalid("tool_choice", "'required' needs at least one tool in tools")
        return choice
    expect(raw, "object", "tool_choice")
    one_of(
        take(raw, "type", "string", "tool_choice", required=True), ("function",), "tool_choice.type"
    )
    fn = take(raw, "function", "object", "tool_choice", required=True)
    name = take(fn, "name", "string", "tool_choice.function", required=True)
    if name not in names:
        raise invalid("tool_choice.function.name", f"no tool named {name!r} in tools")
    return {"type": "function", "function": {"name": name}}


# ---------------------------------------------------------------------------------------------
# Responses


def usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def completion(completion_id: str, created: int, model: str, answer: Answer) -> dict[str, Any]:
    """The non-streamed `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.content or None}
    calls = answer.tool_calls()
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": answer.finish_reason or "stop",
            }
        ],
        "usage": usage(answer),
    }


def _tail(finish: str | None) -> bytes:
    return f',"logprobs":null,"finish_reason":{dumps(finish)}}}]}}\n\n'.encode()


_OPEN_TAIL = _tail(None)  # every chunk but the last


class ChunkWriter:
    """Server-sent events of one streamed completion: `data: {chunk}` ... `data: [DONE]`.

    The chunk envelope (id, created, model) is rendered once per request; each delta costs
    one small json.dumps.
    """

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
        head["model"] = model
        self._envelope = dumps(head)[:-1]
        self._head = f'data: {self._envelope},"choices":[{{"index":0,"delta":'.encode()
        self._include_usage = include_usage
        self.answer = Answer()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        tail = _OPEN_TAIL if finish is None else _tail(finish)
        return self._head + dumps(delta).encode() + tail

    def start(self, prompt_tokens: int = 0) -> bytes:
        """The first event: the assistant role (usage comes at the end)."""
        return self._chunk({"role": "assistant", "content": ""})

    def feed(self, chunk: ChatChunk) -> bytes:
        """Events for one backend chunk (none for an empty one); the last one ends the stream."""
        self.answer.add(chunk)
        if chunk.content and not chunk.tool_calls:  # the common case, without a dict or dumps
            text = '{"content":' + dumps_str(chunk.content) + "}"
            out = self._head + text.encode() + _OPEN_TAIL
        else:
            delta: dict[str, Any] = {}
            if chunk.content:
                delta["content"] = chunk.content
            if chunk.tool_calls:
                delta["tool_calls"] = chunk.tool_calls
            out = self._chunk(delta) if delta else b""
        if chunk.finish_reason is None:
            return out
        out += self._chunk({}, chunk.finish_reason)
        if self._include_usage:
            body = f'{self._envelope},"choices":[],"usage":{dumps(usage(self.answer))}}}'
            out += f"data: {body}\n\n".encode()
        return out + b"data: [DONE]\n\n"

    def fail(self, err: ApiError) -> bytes:
        """An error after the stream began: an error event, then the end of the stream."""
        return f"data: {dumps(openai_error(err))}\n\ndata: [DONE]\n\n".encode()
