"""Fuzzing the gateway's request parsing (OpenAI and Anthropic), derandomized and bounded.

Every body is either accepted or refused with a 4xx whose message is one line naming what is
wrong; never an exception of another kind, a 5xx or a hang. Bodies are built from the fields
each API reads, with near-valid and hostile values (wrong types, huge and negative numbers,
lone surrogates, deep nesting), plus raw bytes; a last pass sends them to a real server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k2trt.serve.answer import ParsedChat
from k2trt.serve.anthropic_api import parse_messages
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.body import parse_json
from k2trt.serve.errors import ApiError
from k2trt.serve.scripted import ScriptedBackend
from k2trt.serve.server import ServerThread

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["", "user", "assistant", "tool", "system", "text", "function", "auto"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "bogus"])
text_part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]), "text": json_values})
content = st.one_of(st.text(max_size=10), st.lists(text_part, max_size=2), json_values)
tool_call = st.fixed_dictionaries(
    {
        "id": json_values,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": json_values, "arguments": json_values}),
    }
)
message = st.fixed_dictionaries(
    {"role": roles, "content": content},
    optional={"tool_calls": st.lists(tool_call, max_size=2), "tool_call_id": json_values},
)
schema = st.one_of(json_values, st.just({"type": "object", "properties": {"a": {}}}))
openai_tool = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["function", "other"]),
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "g"])}, optional={"parameters": schema}
        ),
    }
)
anthropic_tool = st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "g"]), "input_schema": schema},
    optional={"type": st.sampled_from(["custom", "bash"])},
)
blocks = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "tool_use", "tool_result", "thinking", "image"])},
        optional={
            "text": json_values,
            "id": json_values,
            "name": json_values,
            "input": json_values,
            "tool_use_id": json_values,
            "content": json_values,
        },
    ),
    max_size=3,
)
common = {
    "model": json_values,
    "max_tokens": json_values,
    "temperature": json_values,
    "top_p": json_values,
    "stream": json_values,
}
openai_body = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(message, max_size=3), json_values)},
    optional={
        **common,
        "tools": st.one_of(st.lists(openai_tool, max_size=2), json_values),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required", "bogus"]),
            st.just({"type": "function", "function": {"name": "f"}}),
            json_values,
        ),
        "seed": json_values,
        "stop": json_values,
        "stream_options": json_values,
        "n": json_values,
        "logprobs": json_values,
        "max_completion_tokens": json_values,
    },
)
anthropic_message = st.fixed_dictionaries(
    {"role": roles, "content": st.one_of(st.text(max_size=10), blocks, json_values)}
)
anthropic_body = st.fixed_dictionaries(
    {
        "messages": st.one_of(st.lists(anthropic_message, max_size=3), json_values),
        "max_tokens": st.one_of(st.integers(-2, 100), json_values),
    },
    optional={
        **{k: v for k, v in common.items() if k != "max_tokens"},
        "system": json_values,
        "tools": st.one_of(st.lists(anthropic_tool, max_size=2), json_values),
        "tool_choice": st.one_of(
            st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none"])}),
            json_values,
        ),
        "stop_sequences": json_values,
        "top_k": json_values,
    },
)
# Hostile shapes: deep nesting, lone surrogates, huge numbers, as raw JSON text.
hostile = st.sampled_from(
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"messages": ' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b"0" * 5000 + b"}",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
        b'{"messages": [{"role": "user", "content": "x"}], "top_p": 1' + b"0" * 400 + b"}",
        b'{"messages": [{"role": "user", "content": "x"}], "seed": 1' + b"0" * 30 + b"}",
        b'{"\\ud800": 1}',
        b"",
        b"\xff\xfe",
        b"null",
    ]
)


def _openai(value: Any) -> ParsedChat:
    from k2trt.serve.openai_api import parse_chat

    return parse_chat(value)


def accepted_or_refused(raw: bytes, parse: Any) -> None:
    """The contract: a ParsedChat, or an ApiError 4xx with a one-line message naming a field."""
    try:
        assert isinstance(parse(parse_json(raw)), ParsedChat)
    except ApiError as err:
        assert 400 <= err.status < 500, err.message
        assert "\n" not in err.message and len(err.message) < 400, err.message
        if err.param is not None:
            assert err.message.startswith(err.param + ": "), err.message


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


@pytest.mark.slow
@FUZZ
@given(openai_body)
def test_openai_bodies_are_accepted_or_refused_in_one_line(body: dict[str, Any]) -> None:
    accepted_or_refused(encode(body), _openai)


@pytest.mark.slow
@FUZZ
@given(anthropic_body)
def test_anthropic_bodies_are_accepted_or_refused_in_one_line(body: dict[str, Any]) -> None:
    accepted_or_refused(encode(body), parse_messages)


@FUZZ
@given(st.one_of(hostile, st.binary(max_size=64)))
def test_raw_and_hostile_bytes_are_refused_in_one_line(raw: bytes) -> None:
    accepted_or_refused(raw, _openai)
    accepted_or_refused(raw, parse_messages)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    backend = ScriptedBackend(["Hi <|tool_calls_section_begin|>"], max_context=4096)
    app = create_app(backend, ServeConfig(max_tokens_cap=8))
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ServerThread(app))
        yield stack.enter_context(httpx.Client(base_url=server.url, timeout=10))


def no_5xx(client: httpx.Client, path: str, raw: bytes) -> None:
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        body = r.json()
        error = body["error"]
        assert "\n" not in error["message"]


@settings(FUZZ, max_examples=60)
@given(st.one_of(openai_body.map(encode), hostile))
def test_openai_route_never_answers_5xx(client: httpx.Client, raw: bytes) -> None:
    no_5xx(client, "/v1/chat/completions", raw)


@settings(FUZZ, max_examples=60)
@given(st.one_of(anthropic_body.map(encode), hostile))
def test_anthropic_route_never_answers_5xx(client: httpx.Client, raw: bytes) -> None:
    no_5xx(client, "/v1/messages", raw)
