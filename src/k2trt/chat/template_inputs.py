"""What a chat template sees: inputs rebuilt the way transformers rebuilds them, plus our options.

Mirrors transformers' `_plain_template_data` and `_alias_reasoning_fields`, and
`apply_chat_template`'s dropping of keys whose value is None; `rewrite_tool_call_ids`,
`flatten_content` and `drop_names` are our own options (see `render_chat`).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from k2trt.errors import K2Error

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # as transformers aliases them


def plain(value: Any) -> Any:
    """Rebuild `value` from plain JSON types, so the template never sees rich objects.

    Same cases, same order, as transformers' `_plain_template_data`; it also makes the result
    a deep copy, which is what keeps the caller's data safe from mutating templates.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    numpy = sys.modules.get("numpy")  # a numpy scalar can only exist if numpy is imported
    if numpy is not None and isinstance(value, numpy.generic):
        return plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    # transformers fills `reasoning_content` (and `thinking`) from whichever name was given.
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def rewrite_tool_call_ids(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` with Moonshot-style tool-call ids, as Moonshot's API assigns them.

    Every assistant tool call, in order, becomes `functions.NAME:IDX` (IDX counts calls across
    the whole conversation); a tool message's `tool_call_id` follows the latest call that had
    its old id. Ids that match no call are left alone.

    >>> msgs = [{"role": "assistant", "content": "", "tool_calls": [
    ...     {"id": "c1", "function": {"name": "f", "arguments": "{}"}}]},
    ...     {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    >>> [m.get("tool_call_id") for m in rewrite_tool_call_ids(msgs)]
    [None, 'functions.f:0']
    """
    out = [dict(m) for m in copy.deepcopy(list(messages))]
    _rewrite_ids_in_place(out)
    return out


def _rewrite_ids_in_place(messages: list[dict[str, Any]]) -> None:
    latest: dict[str, str] = {}  # old id -> new id of the most recent call that used it
    counter = 0
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "assistant":
            for j, call in enumerate(message.get("tool_calls") or ()):
                where = f"messages[{i}].tool_calls[{j}]"
                if not isinstance(call, dict):
                    raise K2Error("tool call must be an object", path=where)
                new_id = f"functions.{_call_name(call, where)}:{counter}"
                counter += 1
                if isinstance(call.get("id"), str):
                    latest[call["id"]] = new_id
                call["id"] = new_id
        elif role == "tool" and message.get("tool_call_id") in latest:
            message["tool_call_id"] = latest[message["tool_call_id"]]


def _call_name(call: dict[str, Any], where: str) -> str:
    function = call.get("function", call)
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise K2Error("tool call has no function name", path=f"{where}.function.name")
    return name


def _flatten_text_parts(content: Any) -> Any:
    # Only all-text lists are joined: anything else is the template's business.
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return content


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    rewrite_tool_ids: bool
    drop_none: bool
    flatten_content: bool
    drop_names: bool


def prepare_messages(messages: Sequence[Any], opts: RenderOptions) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise K2Error("messages must be a list of message objects", path="messages")
    chat = plain(list(messages))
    for i, message in enumerate(chat):
        if not isinstance(message, dict):
            raise K2Error(
                f"message must be an object, got {type(message).__name__}", path=f"messages[{i}]"
            )
    if opts.drop_none:  # apply_chat_template: APIs send content=None, templates expect no key
        chat = [{k: v for k, v in m.items() if v is not None} for m in chat]
    if opts.drop_names:
        chat = [{k: v for k, v in m.items() if k != "name"} for m in chat]
    if opts.flatten_content:
        chat = [
            {**m, "content": _flatten_text_parts(m["content"])} if "content" in m else m
            for m in chat
        ]
    if opts.rewrite_tool_ids:
        _rewrite_ids_in_place(chat)
    return [_alias_reasoning(m) for m in chat]


def prepare_tools(tools: Sequence[Any] | None) -> list[Any] | None:
    if tools is None:
        return None
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise K2Error("tools must be a list of tool objects", path="tools")
    for i, tool in enumerate(tools):
        # transformers also turns Python functions into schemas; that needs transformers.
        if not isinstance(tool, Mapping):
            raise K2Error("tool must be a JSON schema object", path=f"tools[{i}]")
    result: list[Any] = plain(list(tools))
    return result
