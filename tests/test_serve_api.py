"""The gateway's API mappings: OpenAI and Anthropic bodies to ChatRequest, chunks to answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from k2trt.runtime.types import ChatChunk, ChatRequest
from k2trt.serve.answer import Answer
from k2trt.serve.anthropic_api import EventWriter, message, parse_messages
from k2trt.serve.errors import ApiError
from k2trt.serve.openai_api import ChunkWriter, completion, parse_chat

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
CALL = {
    "id": "functions.get_weather:0",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
START = {"index": 0, "id": CALL["id"], "type": "function"}
START["function"] = {"name": "get_weather", "arguments": ""}
ARGS = {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


# ---------------------------------------------------------------------------------------------
# OpenAI requests


def test_openai_body_maps_onto_chat_request() -> None:
    parsed = parse_chat(
        {
            "model": "anything",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather "},
                        {"type": "text", "text": "in Paris?"},
                    ],
                },
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": CALL["id"], "content": "sunny", "extra": 1},
            ],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 50,
            "max_completion_tokens": 40,
            "temperature": 0.2,
            "top_p": 0.9,
            "seed": 7,
            "stop": "END",
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "ignored",
        }
    )
    assert parsed.stream and parsed.include_usage
    assert parsed.request == ChatRequest(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "content": "sunny", "tool_call_id": CALL["id"]},
        ],
        tools=[  # what the template renders, and "strict" for the tool grammar
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather now.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": True,
                },
            }
        ],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
        temperature=0.2,
        top_p=0.9,
        seed=7,
        stop=("END",),
    )


def test_openai_defaults() -> None:
    parsed = parse_chat({"messages": [user()]})
    assert (parsed.stream, parsed.include_usage) == (False, False)
    assert parsed.request == ChatRequest(messages=[user()], temperature=0.6)


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({}, "messages", "required"),
        ([], "body", "expected an object"),
        ({"messages": []}, "messages", "at least one"),
        ({"messages": ["hi"]}, "messages[0]", "expected an object, got string"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "required"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "expected one of"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "required"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
            "only text parts",
        ),
        (
            {"messages": [user(), {"role": "tool", "content": "x"}]},
            "messages[1].tool_call_id",
            "required",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].id",
            "required",
        ),
        ({"messages": [user()], "temperature": 3}, "temperature", "[0, 2]"),
        (
            {"messages": [user()], "temperature": "hot"},
            "temperature",
            "expected a number, got string",
        ),
        ({"messages": [user()], "top_p": 0}, "top_p", "(0, 1]"),
        ({"messages": [user()], "max_tokens": 0}, "max_tokens", "at least 1"),
        (
            {"messages": [user()], "max_tokens": True},
            "max_tokens",
            "expected an integer, got boolean",
        ),
        ({"messages": [user()], "stop": ["ok", 1]}, "stop[1]", "expected a string"),
        ({"messages": [user()], "seed": 1.5}, "seed", "expected an integer"),
        ({"messages": [user()], "tools": [{"function": {}}]}, "tools[0].function.name", "required"),
        (
            {"messages": [user()], "tools": [{"type": "code", "function": {"name": "f"}}]},
            "tools[0].type",
            "function",
        ),
        (
            {
                "messages": [user()],
                "tools": [TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice.function.name",
            "no tool named 'nope'",
        ),
        (
            {"messages": [user()], "tool_choice": "required"},
            "tool_choice",
            "needs at least one tool",
        ),
        (
            {"messages": [user()], "tool_choice": "always"},
            "tool_choice",
            "expected one of auto, none, required",
        ),
        ({"messages": [user()], "n": 2}, "n", "only 1"),
        ({"messages": [user()], "logprobs": True}, "logprobs", "not supported"),
        ({"messages": [user()], "stream": "yes"}, "stream", "true or false"),
    ],
)
def test_openai_malformed_names_the_field(body: Any, param: str, says: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat(body)
    err = info.value
    assert (err.status, err.param) == (400, param)
    assert err.message.startswith(f"{param}: ") and says in err.message


# ---------------------------------------------------------------------------------------------
# Anthropic requests


def test_anthropic_body_maps_onto_chat_request() -> None:
    parsed = parse_messages(
        {
            "model": "claude-whatever",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "x"},
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "functions.get_weather:0",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "functions.get_weather:0",
                            "content": [{"type": "text", "text": "sunny"}],
                        },
                        {
                            "type": "tool_result",
                            "tool_use_id": "t2",
                            "content": "boom",
                            "is_error": True,
                        },
                        {"type": "text", "text": "Thanks."},
                    ],
                },
            ],
            "tools": [
                {
                    "name": "get_weather",
                    "description": "Weather now.",
                    "input_schema": {"type": "object"},
                }
            ],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "temperature": 0.5,
            "top_k": 40,
            "stop_sequences": ["END", "STOP"],
            "stream": True,
        }
    )
    assert parsed.stream
    assert parsed.request == ChatRequest(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "functions.get_weather:0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "sunny"},
            {"role": "tool", "tool_call_id": "t2", "content": "Error: boom"},
            {"role": "user", "content": "Thanks."},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather now.",
                    "parameters": {"type": "object"},
                },
            }
        ],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
        temperature=0.3,
        stop=("END", "STOP"),
    )


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")],
)
def test_anthropic_tool_choice(choice: dict[str, str], expected: str) -> None:
    body = {"max_tokens": 1, "messages": [user()], "tool_choice": choice}
    body["tools"] = [{"name": "f", "input_schema": {}}]
    assert parse_messages(body).request.tool_choice == expected


def test_anthropic_temperature_is_scaled_by_0_6() -> None:
    base = {"max_tokens": 1, "messages": [user()]}
    assert parse_messages(base).request.temperature == pytest.approx(0.6)
    assert parse_messages({**base, "temperature": 0}).request.temperature == 0
    assert parse_messages({**base, "temperature": 1}).request.temperature == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"messages": [user()]}, "max_tokens", "required"),
        ({"max_tokens": 0, "messages": [user()]}, "max_tokens", "at least 1"),
        ({"max_tokens": 5}, "messages", "required"),
        (
            {"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "messages[0].role",
            "user, assistant",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
            },
            "messages[0].content[0].type",
            "expected text or tool_result",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].tool_use_id",
            "required",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "f"}]}
                ],
            },
            "messages[0].content[0].input",
            "required",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": []}]},
            "messages[0].content",
            "at least one block",
        ),
        (
            {"max_tokens": 5, "messages": [user()], "system": [{"type": "image"}]},
            "system[0].type",
            "only text",
        ),
        ({"max_tokens": 5, "messages": [user()], "temperature": 1.5}, "temperature", "[0, 1]"),
        (
            {"max_tokens": 5, "messages": [user()], "tools": [{"name": "f"}]},
            "tools[0].input_schema",
            "required",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [user()],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools[0].type",
            "only custom tools",
        ),
        (
            {"max_tokens": 5, "messages": [user()], "tool_choice": {"type": "any"}},
            "tool_choice",
            "needs at least one tool",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [user()],
                "tools": [{"name": "f", "input_schema": {}}],
                "tool_choice": {"type": "tool", "name": "g"},
            },
            "tool_choice.name",
            "no tool named 'g'",
        ),
        (
            {"max_tokens": 5, "messages": [user()], "stop_sequences": "END"},
            "stop_sequences",
            "expected an array",
        ),
    ],
)
def test_anthropic_malformed_names_the_field(body: Any, param: str, says: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_messages(body)
    assert (info.value.status, info.value.param) == (400, param)
    assert says in info.value.message


# ---------------------------------------------------------------------------------------------
# Answers


def tool_call_chunks() -> list[ChatChunk]:
    return [
        ChatChunk(content="Let me check."),
        ChatChunk(tool_calls=[START]),
        ChatChunk(tool_calls=[ARGS]),
        ChatChunk(finish_reason="tool_calls", prompt_tokens=10, completion_tokens=7),
    ]


def sse_data(raw: bytes) -> list[Any]:
    events = raw.decode().split("\n\n")
    assert events[-1] == ""
    out = []
    for event in events[:-1]:
        assert event.startswith("data: ")
        data = event[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_openai_stream_chunks() -> None:
    writer = ChunkWriter("chatcmpl-1", 123, "kimi", include_usage=True)
    raw = writer.start() + b"".join(writer.feed(c) for c in tool_call_chunks())
    events = sse_data(raw)
    assert events[-1] == "[DONE]"
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 123, "model": "kimi"}
    choice = {"index": 0, "logprobs": None, "finish_reason": None}
    assert events[:-1] == [
        {**head, "choices": [{**choice, "delta": {"role": "assistant", "content": ""}}]},
        {**head, "choices": [{**choice, "delta": {"content": "Let me check."}}]},
        {**head, "choices": [{**choice, "delta": {"tool_calls": [START]}}]},
        {**head, "choices": [{**choice, "delta": {"tool_calls": [ARGS]}}]},
        {**head, "choices": [{**choice, "delta": {}, "finish_reason": "tool_calls"}]},
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
        },
    ]


def test_openai_stream_without_usage_and_error_event() -> None:
    writer = ChunkWriter("c", 1, "m", include_usage=False)
    events = sse_data(writer.feed(ChatChunk(content="x", finish_reason="length")))
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None, "length"]
    failed = sse_data(writer.fail(ApiError(500, "backend error: boom")))
    assert failed == [
        {
            "error": {
                "message": "backend error: boom",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
        "[DONE]",
    ]


def test_openai_completion_object() -> None:
    answer = Answer()
    for chunk in tool_call_chunks():
        answer.add(chunk)
    assert completion("chatcmpl-1", 5, "kimi", answer) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 5,
        "model": "kimi",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL]},
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
    }


def anthropic_events(raw: bytes) -> list[tuple[str, Any]]:
    out = []
    for event in raw.decode().split("\n\n")[:-1]:
        kind, data = event.split("\n")
        assert kind.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == kind[len("event: ") :]
        out.append((payload["type"], payload))
    return out


def test_anthropic_event_sequence() -> None:
    writer = EventWriter("msg_1", "kimi")
    raw = writer.start() + b"".join(writer.feed(c) for c in tool_call_chunks())
    events = anthropic_events(raw)
    assert [kind for kind, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["id"], start["model"], start["content"], start["stop_reason"]) == (
        "msg_1",
        "kimi",
        [],
        None,
    )
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "Let me check."}
    assert events[5][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": CALL["id"], "name": "get_weather", "input": {}},
    }
    assert events[6][1] == {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'},
    }
    assert events[8][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 10, "output_tokens": 7},
    }


def test_anthropic_message_object() -> None:
    answer = Answer()
    for chunk in tool_call_chunks():
        answer.add(chunk)
    bad = Answer()
    bad.add(
        ChatChunk(
            tool_calls=[{**START, "id": "x"}, {"index": 0, "function": {"arguments": "{oops"}}]
        )
    )
    bad.add(ChatChunk(finish_reason="length"))
    assert message("msg_1", "kimi", answer) == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "kimi",
        "content": [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": CALL["id"],
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 7},
    }
    out = message("m", "kimi", bad)
    assert out["content"] == [
        {"type": "tool_use", "id": "x", "name": "get_weather", "input": {"raw_arguments": "{oops"}}
    ]
    assert out["stop_reason"] == "max_tokens"


def stopped_chunks() -> list[ChatChunk]:
    last = ChatChunk(
        finish_reason="stop", prompt_tokens=3, completion_tokens=2, stop_sequence="END"
    )
    return [ChatChunk(content="Hello "), last]


def test_anthropic_stop_sequence_in_message_and_stream() -> None:
    answer = Answer()
    for chunk in stopped_chunks():
        answer.add(chunk)
    out = message("msg_1", "kimi", answer)
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")
    assert out["content"] == [{"type": "text", "text": "Hello "}]
    writer = EventWriter("msg_1", "kimi")
    events = anthropic_events(writer.start() + b"".join(writer.feed(c) for c in stopped_chunks()))
    assert events[0][1]["message"]["stop_sequence"] is None
    [delta] = [data for kind, data in events if kind == "message_delta"]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_openai_stop_sequence_is_a_plain_stop() -> None:
    answer = Answer()
    for chunk in stopped_chunks():
        answer.add(chunk)
    assert completion("c", 1, "kimi", answer)["choices"][0]["finish_reason"] == "stop"
    writer = ChunkWriter("c", 1, "kimi", include_usage=False)
    events = sse_data(b"".join(writer.feed(c) for c in stopped_chunks()))
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None, "stop"]
    assert all("stop_sequence" not in json.dumps(e) for e in events)
