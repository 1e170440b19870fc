"""The packaged Triton `chat` model's inputs and outputs: one table, and the conversions both
sides use (the model's `model.py` and the gateway's Triton backend).

Tensors are numpy arrays of shape [1] (max_batch_size 0); strings are UTF-8 bytes in object
arrays, as Triton's Python backend and tritonclient both hand them over. JSON-valued fields
carry lists/objects as JSON text.

>>> req = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8, stop=("x",))
>>> inputs_to_request(request_to_inputs(req)) == req
True
>>> c = ChatChunk(content="é", finish_reason="stop", prompt_tokens=3, completion_tokens=1,
...               stop_sequence="END")
>>> outputs_to_chunk(chunk_to_outputs(c)) == c
True
>>> chunk_to_outputs(ChatChunk(content="é"))["stop_sequence"]  # "" on the wire: none
array([b''], dtype=object)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from k2trt.runtime.types import ChatChunk, ChatRequest, RequestRejected


@dataclass(frozen=True)
class WireField:
    """One tensor: its Triton name and data type, and whether a request may leave it out."""

    name: str
    triton_type: str  # config.pbtxt spelling: TYPE_STRING, TYPE_INT32, ...
    optional: bool = True


CHAT_MODEL = "chat"

CHAT_INPUTS: tuple[WireField, ...] = (
    WireField("messages", "TYPE_STRING", optional=False),  # JSON array
    WireField("tools", "TYPE_STRING"),  # JSON array of OpenAI tool definitions
    WireField("tool_choice", "TYPE_STRING"),  # JSON: "auto" | "none" | "required" | {...}
    WireField("max_tokens", "TYPE_INT32"),
    WireField("temperature", "TYPE_FP32"),
    WireField("top_p", "TYPE_FP32"),
    WireField("seed", "TYPE_INT64"),
    WireField("stop", "TYPE_STRING"),  # JSON array of strings
)

CHAT_OUTPUTS: tuple[WireField, ...] = (
    WireField("content", "TYPE_STRING", optional=False),  # text delta, may be ""
    WireField("tool_calls", "TYPE_STRING", optional=False),  # JSON array of OpenAI deltas
    WireField("finish_reason", "TYPE_STRING", optional=False),  # "" until the last response
    WireField("prompt_tokens", "TYPE_INT32", optional=False),
    WireField("completion_tokens", "TYPE_INT32", optional=False),
    WireField("stop_sequence", "TYPE_STRING", optional=False),  # the stop string that ended it
)

NUMPY_TYPES: dict[str, Any] = {
    "TYPE_STRING": np.object_,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP32": np.float32,
    "TYPE_BOOL": np.bool_,
}

# tritonclient's InferInput datatype names for the same types.
CLIENT_TYPES: dict[str, str] = {
    "TYPE_STRING": "BYTES",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP32": "FP32",
    "TYPE_BOOL": "BOOL",
}

_FIELDS = {f.name: f for f in CHAT_INPUTS + CHAT_OUTPUTS}


# A rejected request's error text: what the chat model (and every packaged model) sends, and
# what the gateway's Triton backend parses back; Triton may wrap it ("in model 'chat': ...").
_REJECTED = re.compile(r"request rejected \((\w+)\): (.*)", re.S)


def rejection_message(exc: RequestRejected) -> str:
    """The Triton error text for a rejected request: names the field.

    >>> rejection_message(RequestRejected("max_tokens must be at least 1", "max_tokens"))
    'request rejected (max_tokens): max_tokens must be at least 1'
    """
    return f"request rejected ({exc.field}): {exc}"


def parse_rejection(text: str) -> RequestRejected | None:
    """The RequestRejected inside a Triton error text (Triton may wrap it), or None.

    >>> exc = parse_rejection("in chat: request rejected (tools): tools: expected a JSON array")
    >>> exc.field, str(exc)
    ('tools', 'tools: expected a JSON array')
    """
    match = _REJECTED.search(text)
    return None if match is None else RequestRejected(match.group(2), match.group(1))


def strings(values: Iterable[str], shape: tuple[int, ...] | None = None) -> NDArray[Any]:
    """A BYTES tensor of UTF-8 strings (optionally reshaped).

    >>> strings(["é"], (1, 1))
    array([[b'\\xc3\\xa9']], dtype=object)
    """
    array = np.array([v.encode("utf-8") for v in values], dtype=np.object_)
    return array.reshape(shape) if shape is not None else array


def scalar(arrays: Mapping[str, NDArray[Any]], name: str) -> Any:
    """The one value of tensor `name` (any shape): text for BYTES, a Python scalar otherwise;
    RequestRejected naming it when it holds more or fewer, or bytes that are not UTF-8.

    >>> scalar({"n": np.array([[3]], dtype=np.int32), "s": strings(["é"])}, "n")
    3
    """
    flat = np.asarray(arrays[name]).reshape(-1)
    if flat.size != 1:
        raise RequestRejected(f"{name}: expected one value, got {flat.size}", name)
    value = flat[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRejected(f"{name}: not UTF-8 text", name) from None
    return value.item() if hasattr(value, "item") else value


def _tensor(name: str, value: Any) -> NDArray[Any]:
    kind = NUMPY_TYPES[_FIELDS[name].triton_type]
    if kind is np.object_:
        return strings([str(value)])
    return np.array([value], dtype=kind)


def _json(arrays: Mapping[str, NDArray[Any]], name: str) -> Any:
    try:
        return json.loads(scalar(arrays, name))
    except ValueError as exc:
        raise RequestRejected(f"{name}: expected JSON text ({exc})", name) from None


def request_to_inputs(req: ChatRequest) -> dict[str, NDArray[Any]]:
    """The chat model's input tensors for a request (defaults left out)."""
    out = {"messages": _tensor("messages", json.dumps(req.messages, ensure_ascii=False))}
    if req.tools is not None:
        out["tools"] = _tensor("tools", json.dumps(req.tools, ensure_ascii=False))
    if req.tool_choice != "auto":
        out["tool_choice"] = _tensor("tool_choice", json.dumps(req.tool_choice))
    if req.max_tokens is not None:
        out["max_tokens"] = _tensor("max_tokens", req.max_tokens)
    out["temperature"] = _tensor("temperature", req.temperature)
    out["top_p"] = _tensor("top_p", req.top_p)
    if req.seed is not None:
        out["seed"] = _tensor("seed", req.seed)
    if req.stop:
        out["stop"] = _tensor("stop", json.dumps(list(req.stop), ensure_ascii=False))
    return out


def inputs_to_request(arrays: Mapping[str, NDArray[Any]]) -> ChatRequest:
    """A ChatRequest from the tensors a client sent; RequestRejected names a bad field."""
    messages = _json(arrays, "messages")
    if not isinstance(messages, list):
        raise RequestRejected("messages: expected a JSON array", "messages")
    tools = _json(arrays, "tools") if "tools" in arrays else None
    if tools is not None and not isinstance(tools, list):
        raise RequestRejected("tools: expected a JSON array", "tools")
    stop = _json(arrays, "stop") if "stop" in arrays else []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestRejected("stop: expected a JSON array of strings", "stop")
    req = ChatRequest(
        messages=messages,
        tools=tools,
        tool_choice=_json(arrays, "tool_choice") if "tool_choice" in arrays else "auto",
        max_tokens=int(scalar(arrays, "max_tokens")) if "max_tokens" in arrays else None,
        temperature=_float(arrays, "temperature", 0.6),
        top_p=_float(arrays, "top_p", 1.0),
        seed=int(scalar(arrays, "seed")) if "seed" in arrays else None,
        stop=tuple(stop),
    )
    return req


def _float(arrays: Mapping[str, NDArray[Any]], name: str, default: float) -> float:
    # FP32 on the wire: the shortest decimal that is this float32, so 0.6 comes back as 0.6.
    return float(str(np.float32(scalar(arrays, name)))) if name in arrays else default


def chunk_to_outputs(chunk: ChatChunk) -> dict[str, NDArray[Any]]:
    """The chat model's output tensors for one streamed chunk."""
    return {
        "content": _tensor("content", chunk.content),
        "tool_calls": _tensor("tool_calls", json.dumps(chunk.tool_calls, ensure_ascii=False)),
        "finish_reason": _tensor("finish_reason", chunk.finish_reason or ""),
        "prompt_tokens": _tensor("prompt_tokens", chunk.prompt_tokens),
        "completion_tokens": _tensor("completion_tokens", chunk.completion_tokens),
        "stop_sequence": _tensor("stop_sequence", chunk.stop_sequence or ""),
    }


def outputs_to_chunk(arrays: Mapping[str, NDArray[Any]]) -> ChatChunk:
    """A ChatChunk from one response's output tensors."""
    return ChatChunk(
        content=scalar(arrays, "content"),
        tool_calls=_json(arrays, "tool_calls"),
        finish_reason=scalar(arrays, "finish_reason") or None,
        prompt_tokens=int(scalar(arrays, "prompt_tokens")),
        completion_tokens=int(scalar(arrays, "completion_tokens")),
        stop_sequence=scalar(arrays, "stop_sequence") or None,
    )
