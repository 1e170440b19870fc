"""Constrained tool calls through the packaged Triton models: preprocessing compiles the grammar
(a bad schema is that request's rejection), chat carries the structural tag to tensorrt_llm,
whose CPU stand-in (the reference engine, tiny random checkpoint) masks every step.

In-process (the model.py files with a stand-in for triton_python_backend_utils), then on a
real CPU tritonserver through `k2trt serve --triton-url`'s gateway (marked triton, slow)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest

from grammar_cases import SCHEMAS, TOOLS, USER
from k2trt.runtime.chat import ModelFiles
from k2trt.runtime.reference import ReferenceEngine
from k2trt.runtime.types import ChatChunk, ChatRequest
from k2trt.runtime.wire import outputs_to_chunk, parse_rejection, request_to_inputs
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.server import ServerThread
from k2trt.triton_repo import spec
from k2trt.triton_repo.repository import REPOSITORY_DIR
from k2trt.triton_repo.serving.chat import llm_arrays
from k2trt.triton_repo.serving.pre import preprocess
from triton_fixtures import (
    FakePb,
    FakeRequest,
    load_models,
    require_cpu_triton,
    serving,
    tiny_package,  # noqa: F401  (fixture)
)


@pytest.fixture(scope="module")
def files(tiny_package: Path) -> ModelFiles:  # noqa: F811
    return ModelFiles.load(tiny_package / REPOSITORY_DIR / spec.PRE_MODEL / spec.MODEL_FILES_DIR)


@pytest.fixture(scope="module")
def pb(tiny_package: Path, prepared_ckpt: Path) -> FakePb:  # noqa: F811
    pb_ = FakePb()
    load_models(tiny_package / REPOSITORY_DIR, pb_)
    serving(pb_, spec.LLM_MODEL).engine = ReferenceEngine.load(prepared_ckpt)
    return pb_


def run_chat(pb: FakePb, req: ChatRequest) -> FakeRequest:
    request = FakeRequest(request_to_inputs(req))
    pb.models[spec.CHAT_MODEL].execute([request])
    assert request.sender.finished.wait(120), "no final response"
    return request


def calls_of(chunks: list[ChatChunk]) -> list[dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    for delta in (d for c in chunks for d in c.tool_calls):
        call = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
        call["name"] += delta.get("function", {}).get("name", "")
        call["arguments"] += delta.get("function", {}).get("arguments", "")
    return list(calls.values())


def test_preprocessing_sends_the_tag_and_chat_passes_it(files: ModelFiles, pb: FakePb) -> None:
    grammar = serving(pb, spec.PRE_MODEL).grammar
    req = ChatRequest(USER, tools=TOOLS, tool_choice="required", max_tokens=8)
    out = preprocess(files, request_to_inputs(req), grammar)
    (tag,) = out["guide"].tolist()
    assert json.loads(tag)["type"] == "structural_tag"
    arrays = llm_arrays(out, "k")
    assert arrays["guided_decoding_guide_type"].tolist() == [[b"structural_tag"]]
    assert arrays["guided_decoding_guide"].tolist() == [[tag]]
    plain = preprocess(files, request_to_inputs(ChatRequest(USER, max_tokens=8)), grammar)
    assert plain["guide"].size == 0 and "guided_decoding_guide" not in llm_arrays(plain, "k")


@pytest.mark.slow
def test_required_calls_validate_in_process(pb: FakePb) -> None:
    for seed in range(3):
        req = ChatRequest(
            USER, tools=TOOLS, tool_choice="required", max_tokens=300, temperature=1.0, seed=seed
        )
        request = run_chat(pb, req)
        chunks = [outputs_to_chunk(r.arrays()) for r in request.sender.responses()]
        assert chunks[-1].finish_reason == "tool_calls"
        for call in calls_of(chunks):
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_strict_keyword_is_rejected_naming_the_tool(pb: FakePb) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "array", "contains": {}}}}
    tools = [{"type": "function", "function": {"name": "c", "parameters": bad, "strict": True}}]
    request = run_chat(pb, ChatRequest(USER, tools=tools, tool_choice="required", max_tokens=4))
    [(response, _)] = request.sender.sent
    exc = parse_rejection(response.error().message())
    assert exc is not None and exc.field == "tools"
    assert "tools[0] (c): parameters.properties.a: keyword 'contains'" in str(exc)


def test_llm_refuses_a_broken_tag(pb: FakePb) -> None:
    arrays = {
        "input_ids": np.array([[1, 2, 3]], dtype=np.int32),
        "guided_decoding_guide_type": np.array([[b"structural_tag"]], dtype=np.object_),
        "guided_decoding_guide": np.array([[b'{"type": "structural_tag"}']], dtype=np.object_),
    }
    request = FakeRequest(arrays)
    pb.models[spec.LLM_MODEL].execute([request])
    assert request.sender.finished.wait(30)
    [(response, _)] = request.sender.sent
    exc = parse_rejection(response.error().message())
    assert exc is not None and exc.field == "guided_decoding_guide"
    assert "cannot build the tool-call grammar" in str(exc)


# ---------------------------------------------------------------------------------------------
# A real CPU tritonserver, unscripted: the reference engine masks inside Triton


@pytest.fixture(scope="module")
def gateway(tiny_package: Path) -> Iterator[httpx.Client]:  # noqa: F811
    require_cpu_triton()
    from k2trt.serve.triton_backend import TritonBackend
    from k2trt.triton_repo.cpu_server import CpuTritonServer

    with CpuTritonServer(tiny_package / REPOSITORY_DIR) as server:
        backend = TritonBackend(server.grpc_url, model_id="kimi-k2")
        with (
            ServerThread(create_app(backend, ServeConfig())) as http,
            httpx.Client(base_url=http.url, timeout=300) as client,
        ):
            yield client


@pytest.mark.triton
@pytest.mark.slow
def test_triton_required_calls_always_validate(gateway: httpx.Client) -> None:
    for seed in range(3):
        body = {
            "messages": USER,
            "tools": TOOLS,
            "tool_choice": "required",
            "seed": seed,
            "temperature": 1.0,
            "max_tokens": 300,
        }
        response = gateway.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        for call in choice["message"]["tool_calls"]:
            args = json.loads(call["function"]["arguments"])
            jsonschema.validate(args, SCHEMAS[call["function"]["name"]])


@pytest.mark.triton
@pytest.mark.slow
def test_triton_bad_schema_is_400_and_server_lives(gateway: httpx.Client) -> None:
    broken = {"type": "object", "properties": {"s": {"type": "string", "pattern": "(a"}}}
    tools = [{"type": "function", "function": {"name": "broken", "parameters": broken}}]
    body = {"messages": USER, "tools": tools, "tool_choice": "required", "max_tokens": 4}
    response = gateway.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("tools[0] (broken): parameters: ")
    fine = gateway.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
    assert fine.status_code == 200
