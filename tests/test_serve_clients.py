"""The official `openai` and `anthropic` SDKs against a real server: streaming and not, and a
full tool round trip (the model calls a tool, the client returns the result, the model
answers), on the scripted backend and on the CPU reference backend scripted with
$K2TRT_SCRIPT (the real tokenizer, stop ids and tool-call parser)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from k2trt.runtime.local import LocalBackend
from k2trt.runtime.scripted import SCRIPT_ENV
from k2trt.runtime.types import ChatBackend
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.demo import roundtrip
from k2trt.serve.scripted import ScriptedBackend
from k2trt.serve.server import ServerThread

KEY = "test-key"
CALL = (
    "Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'
)
ANSWER = "It is sunny in Paris."
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
OPENAI_TOOLS: Any = [{"type": "function", "function": WEATHER_TOOL}]
ANTHROPIC_TOOLS: Any = [
    {
        "name": "get_weather",
        "description": "Weather now.",
        "input_schema": WEATHER_TOOL["parameters"],
    }
]
QUESTION: Any = [{"role": "user", "content": "Weather in Paris?"}]
# The tool result of either API's round trip, as the backend receives it.
SKY = '{"sky": "sunny"}'
TOOL_MESSAGE = {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": SKY}
STOPPED = "Sunny, then rain."  # "then rain" spans tokens, of the tiny model and scripted alike


def served(backend: ChatBackend) -> Iterator[str]:
    with ServerThread(create_app(backend, ServeConfig(api_keys=(KEY,)))) as server:
        yield server.url


def oa(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


def an(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)


@pytest.fixture
def scripted() -> Iterator[tuple[str, ScriptedBackend]]:
    backend = ScriptedBackend(["Hello there!", CALL, ANSWER], model_id="kimi-k2")
    for url in served(backend):
        yield url, backend


@pytest.fixture
def local(tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"replies": [CALL, ANSWER, CALL, ANSWER, STOPPED, STOPPED]}))
    monkeypatch.setenv(SCRIPT_ENV, str(script))
    yield from served(LocalBackend.load(tiny_ckpt, "tiny-kimi"))


# ---------------------------------------------------------------------------------------------
# openai


def openai_round_trip(client: openai.OpenAI) -> tuple[Any, Any]:
    first = client.chat.completions.create(model="m", messages=QUESTION, tools=OPENAI_TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls or []
    assert (call.id, call.function.name) == ("functions.get_weather:0", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    result = {"role": "tool", "tool_call_id": call.id, "content": SKY}
    history = [*QUESTION, choice.message.model_dump(exclude_none=True), result]
    final = client.chat.completions.create(model="m", messages=history, tools=OPENAI_TOOLS)
    assert final.choices[0].message.content == ANSWER
    assert final.choices[0].finish_reason == "stop"
    return first, final


def test_openai_sdk_chat_and_stream(scripted: tuple[str, ScriptedBackend]) -> None:
    url, _ = scripted
    client = oa(url)
    reply = client.chat.completions.create(model="m", messages=QUESTION)
    assert (reply.model, reply.choices[0].message.content) == ("kimi-k2", "Hello there!")
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert [m.id for m in client.models.list()] == ["kimi-k2"]
    stream = client.chat.completions.create(
        model="m", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    calls = [
        c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    assert calls[0][0].function.name == "get_weather"
    args = "".join(c[0].function.arguments or "" for c in calls)
    assert json.loads(args) == {"city": "Paris"}
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_openai_sdk_tool_round_trip(scripted: tuple[str, ScriptedBackend]) -> None:
    url, backend = scripted
    client = oa(url)
    client.chat.completions.create(model="m", messages=QUESTION)  # plays "Hello there!"
    openai_round_trip(client)
    sent = backend.requests[-1].messages
    assert sent[1]["tool_calls"][0]["id"] == "functions.get_weather:0"
    assert sent[2] == TOOL_MESSAGE


def test_openai_sdk_errors(scripted: tuple[str, ScriptedBackend]) -> None:
    url, _ = scripted
    with pytest.raises(openai.BadRequestError) as bad:
        oa(url).chat.completions.create(model="m", messages=QUESTION, temperature=5)
    assert bad.value.param == "temperature"
    nokey = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        nokey.chat.completions.create(model="m", messages=QUESTION)


# ---------------------------------------------------------------------------------------------
# anthropic


def anthropic_round_trip(client: anthropic.Anthropic, stream: bool) -> None:
    if stream:
        with client.messages.stream(
            model="m", max_tokens=64, messages=QUESTION, tools=ANTHROPIC_TOOLS
        ) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(
            model="m", max_tokens=64, messages=QUESTION, tools=ANTHROPIC_TOOLS
        )
    assert first.stop_reason == "tool_use"
    text, use = first.content
    assert text.type == "text" and text.text == "Let me check."
    assert use.type == "tool_use"
    assert (use.id, use.name, use.input) == (
        "functions.get_weather:0",
        "get_weather",
        {"city": "Paris"},
    )
    result = {"type": "tool_result", "tool_use_id": use.id, "content": SKY}
    history = [
        *QUESTION,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [result]},
    ]
    final = client.messages.create(
        model="m", max_tokens=64, messages=history, tools=ANTHROPIC_TOOLS
    )
    assert final.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", ANSWER)]
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_anthropic_sdk_message_and_stream(scripted: tuple[str, ScriptedBackend]) -> None:
    url, _ = scripted
    client = an(url)
    reply = client.messages.create(model="m", max_tokens=64, messages=QUESTION, system="Be brief.")
    assert reply.id.startswith("msg_") and reply.model == "kimi-k2"
    assert [(b.type, getattr(b, "text", None)) for b in reply.content] == [("text", "Hello there!")]
    assert (reply.stop_reason, reply.usage.output_tokens) == ("end_turn", 4)
    with client.messages.stream(model="m", max_tokens=2, messages=QUESTION) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 2


def test_anthropic_sdk_tool_round_trip(scripted: tuple[str, ScriptedBackend]) -> None:
    url, backend = scripted
    client = an(url)
    client.messages.create(model="m", max_tokens=64, messages=QUESTION)  # plays "Hello there!"
    anthropic_round_trip(client, stream=True)
    assert backend.requests[-1].messages[2] == TOOL_MESSAGE


def test_anthropic_sdk_errors(scripted: tuple[str, ScriptedBackend]) -> None:
    url, _ = scripted
    with pytest.raises(anthropic.BadRequestError) as bad:
        an(url).messages.create(model="m", max_tokens=0, messages=QUESTION)
    assert "max_tokens: expected at least 1" in str(bad.value)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0).messages.create(
            model="m", max_tokens=5, messages=QUESTION
        )


def anthropic_stop_sequence(client: anthropic.Anthropic, stream: bool) -> None:
    """A stop sequence ends the turn: stop_reason "stop_sequence", and which one."""
    kw: Any = {
        "model": "m",
        "max_tokens": 64,
        "messages": QUESTION,
        "stop_sequences": ["then rain"],
    }
    if stream:
        with client.messages.stream(**kw) as s:
            reply = s.get_final_message()
    else:
        reply = client.messages.create(**kw)
    assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", "then rain")
    assert [(b.type, getattr(b, "text", None)) for b in reply.content] == [("text", "Sunny, ")]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_stop_sequence(stream: bool) -> None:
    for url in served(ScriptedBackend([STOPPED])):
        anthropic_stop_sequence(an(url), stream)
        reply = oa(url).chat.completions.create(model="m", messages=QUESTION, stop=["then rain"])
        assert reply.choices[0].finish_reason == "stop"


# ---------------------------------------------------------------------------------------------
# The CPU reference backend (tiny model, scripted through the real token path and parser)


def test_round_trips_on_the_local_backend(local: str) -> None:
    first, _ = openai_round_trip(oa(local))
    assert first.model == "tiny-kimi"
    assert first.usage is not None and first.usage.prompt_tokens > 20
    anthropic_round_trip(an(local), stream=False)
    for stream in (False, True):  # the real token path: a stop string split across tokens
        anthropic_stop_sequence(an(local), stream)


@pytest.mark.parametrize("client", ["openai", "urllib"])
def test_demo_round_trip(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch, client: str) -> None:
    if client == "urllib":
        monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` fails: the fallback
    monkeypatch.setenv(SCRIPT_ENV, "left alone")
    summary = roundtrip(tiny_ckpt)
    assert summary.pop("url").startswith("http://127.0.0.1:")
    assert summary.pop("backend") == "local"
    assert summary == {
        "model": "tiny",
        "client": client,
        "chat": "Hello! I am a tiny Kimi K2.",
        "tool_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        "answer": "It is sunny in Paris, 22 °C.",
        "finish_reasons": ["stop", "tool_calls", "stop"],
    }
    assert os.environ[SCRIPT_ENV] == "left alone"
