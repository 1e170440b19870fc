"""Constrained tool calls through a real gateway over the CPU reference engine (tiny random
checkpoint, which never calls tools by itself): every call validates; strict refusals and
grammar failures are one request's 400 or 500, and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from grammar_cases import SCHEMAS, TOOLS, USER
from k2trt.runtime.chat import ModelFiles
from k2trt.runtime.constrain import grammar_for
from k2trt.runtime.local import LocalBackend
from k2trt.runtime.reference import ReferenceEngine
from k2trt.runtime.types import SamplingParams, never
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.server import ServerThread


@pytest.fixture(scope="module")
def files(tiny_ckpt: Path) -> ModelFiles:
    return ModelFiles.load(tiny_ckpt)


@pytest.fixture(scope="module")
def engine(tiny_ckpt: Path) -> ReferenceEngine:
    return ReferenceEngine.load(tiny_ckpt)


def serve(backend: LocalBackend) -> Iterator[httpx.Client]:
    with (
        ServerThread(create_app(backend, ServeConfig())) as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def client(files: ModelFiles, engine: ReferenceEngine) -> Iterator[httpx.Client]:
    yield from serve(LocalBackend(files, engine, grammar=grammar_for(files, "auto")))


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": USER, **body})


def calls_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    return list(choice["message"]["tool_calls"])


@pytest.mark.slow
def test_required_calls_always_validate(client: httpx.Client) -> None:
    for seed in range(6):
        body = {"tools": TOOLS, "tool_choice": "required", "seed": seed, "temperature": 1.0}
        for call in calls_of(chat(client, max_tokens=400, **body)):
            name = call["function"]["name"]
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


@pytest.mark.slow
def test_named_choice_calls_that_tool(client: httpx.Client) -> None:
    choice = {"type": "function", "function": {"name": "set_light"}}
    response = chat(client, tools=TOOLS, tool_choice=choice, seed=1, max_tokens=200)
    (call,) = calls_of(response)
    assert call["function"]["name"] == "set_light"
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS["set_light"])


def test_unsupported_keyword_under_strict_is_400(client: httpx.Client) -> None:
    bad = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}
    tools = [
        *TOOLS,
        {"type": "function", "function": {"name": "neg", "parameters": bad, "strict": True}},
    ]
    response = chat(client, tools=tools, tool_choice="required", max_tokens=4)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "tools"
    assert error["message"] == (
        "tools[3] (neg): parameters.properties.a: keyword 'not' is not supported under strict "
        "(constrained decoding cannot enforce it)"
    )


def test_compile_failure_is_that_request_only(client: httpx.Client) -> None:
    broken = {"type": "object", "properties": {"s": {"type": "string", "pattern": "(a"}}}
    tools = [{"type": "function", "function": {"name": "broken", "parameters": broken}}]
    response = chat(client, tools=tools, tool_choice="required", max_tokens=4)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("tools[0] (broken): parameters: ")
    again = chat(client, max_tokens=2)
    assert again.status_code == 200


def test_opt_out_with_strict_false(client: httpx.Client) -> None:
    # every tool strict: false -> unconstrained; the random model writes no call
    tools = [{"type": "function", "function": {**t["function"], "strict": False}} for t in TOOLS]
    response = chat(client, tools=tools, tool_choice="auto", max_tokens=3, seed=0)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3


class RefusedToken:
    """An engine that honours the constraint protocol but samples a token the grammar refuses
    (what a grammar bug mid-generation looks like): the request must fail alone."""

    def __init__(self, inner: ReferenceEngine) -> None:
        self.inner = inner

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] = never,
    ) -> Iterator[int]:
        if params.constraint is not None:
            mask = params.constraint.start()
            mask.accept(5)  # raises GrammarFailed
        yield from self.inner.generate(prompt_ids, params, cancelled)


def test_grammar_failure_mid_generation_fails_that_request(
    files: ModelFiles, engine: ReferenceEngine
) -> None:
    backend = LocalBackend(files, RefusedToken(engine), grammar=grammar_for(files, "auto"))
    for http in serve(backend):
        failed = chat(http, tools=TOOLS, tool_choice="required", max_tokens=8)
        assert failed.status_code == 500
        assert "GrammarFailed: tool grammar: token 5 is not allowed here" in failed.text
        fine = chat(http, max_tokens=2)  # no tools: no grammar; the server lives
        assert fine.status_code == 200
        assert http.get("/health").status_code == 200


def test_strict_steers_the_grammar_not_the_prompt(files: ModelFiles) -> None:
    from k2trt.runtime.chat import prepare
    from k2trt.runtime.types import ChatRequest

    strict = [{"type": "function", "function": {**t["function"], "strict": True}} for t in TOOLS]
    plain = prepare(files, ChatRequest(USER, tools=TOOLS))
    assert prepare(files, ChatRequest(USER, tools=strict)).prompt_ids == plain.prompt_ids


def test_cli_refuses_an_unknown_mode(tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from k2trt.cli.app import main

    code = main(["serve", "--local", str(tiny_ckpt), "--port", "0", "--tool-grammar", "bogus"])
    assert code == 2
    assert "--tool-grammar must be one of off, auto, strict, got 'bogus'" in capsys.readouterr().err
