"""The packaged repository on a real tritonserver (2.51, CPU, from nvidia-pytriton): every model
READY, chat streamed over gRPC and over HTTP /generate_stream, exact deltas, a scripted tool
call, the real tiny model, rejection, stop strings, client cancellation, and tensorrt_llm as
Triton's OpenAI frontend calls it. One server for the session."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from k2trt.runtime.chat import ModelFiles, prepare
from k2trt.runtime.deltas import DeltaStream
from k2trt.runtime.reference import ReferenceEngine
from k2trt.runtime.types import ChatChunk, ChatRequest
from k2trt.runtime.wire import (
    CHAT_INPUTS,
    CLIENT_TYPES,
    outputs_to_chunk,
    parse_rejection,
    request_to_inputs,
)
from k2trt.triton_repo import spec
from triton_fixtures import (
    ARGUMENTS,
    CONTENT,
    REPLY,
    SCRIPTED_REPLIES,
    TOOLS,
    RunningTriton,
    cpu_triton,  # noqa: F401  (fixture)
    tiny_package,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.triton

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TYPES = {f.name: f.triton_type for f in CHAT_INPUTS}


def chat_inputs(req: ChatRequest) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in request_to_inputs(req).items():
        item = grpcclient.InferInput(name, list(array.shape), CLIENT_TYPES[TYPES[name]])
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


class Stream:
    """A gRPC bidirectional stream to the server, responses in a queue."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, model: str, inputs: list[grpcclient.InferInput]) -> None:
        self.client.async_stream_infer(model, inputs, enable_empty_final_response=True)

    def read(self, timeout: float = 60) -> Iterator[tuple[dict[str, Any], bool]]:
        """(outputs, final) per response until the final one; errors raise."""
        while True:
            result, error = self.responses.get(timeout=timeout)
            if error is not None:
                raise error
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            yield {o.name: result.as_numpy(o.name) for o in response.outputs}, final
            if final:
                return

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def grpc_chat(url: str, req: ChatRequest) -> list[ChatChunk]:
    stream = Stream(url)
    try:
        stream.send(spec.CHAT_MODEL, chat_inputs(req))
        return [outputs_to_chunk(out) for out, _ in stream.read() if out]
    finally:
        stream.close()


def assert_scripted_tool_call(chunks: list[ChatChunk], files: ModelFiles, req: ChatRequest) -> None:
    """Exact deltas: content, then the call's id/name, then its arguments; usage at the end."""
    assert "".join(c.content for c in chunks) == CONTENT
    assert all(c.content or c.tool_calls or c.finish_reason for c in chunks)
    calls = [d for c in chunks for d in c.tool_calls]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert calls[0]["id"] == "functions.get_weather:0" and calls[0]["index"] == 0
    assert "".join(d["function"]["arguments"] for d in calls[1:]) == ARGUMENTS
    assert all(set(d) == {"index", "function"} for d in calls[1:])
    last = chunks[-1]
    assert last.finish_reason == "tool_calls"
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert last.prompt_tokens == len(prepare(files, req).prompt_ids)
    assert last.completion_tokens == len(files.tokenizer.encode_with_specials(REPLY)) + 1


@pytest.fixture(scope="module")
def files(cpu_triton: RunningTriton) -> ModelFiles:  # noqa: F811
    return ModelFiles.load(cpu_triton.repo / spec.PRE_MODEL / spec.MODEL_FILES_DIR)


def test_every_model_is_ready(cpu_triton: RunningTriton) -> None:  # noqa: F811
    client = grpcclient.InferenceServerClient(cpu_triton.server.grpc_url)
    assert client.is_server_ready()
    assert {m: client.is_model_ready(m) for m in spec.MODELS} == dict.fromkeys(spec.MODELS, True)
    index = {
        m["name"]: m["state"] for m in client.get_model_repository_index(as_json=True)["models"]
    }
    assert index == dict.fromkeys(spec.MODELS, "READY")
    for model in spec.MODELS:
        ready = httpx.get(f"http://{cpu_triton.server.http_url}/v2/models/{model}/ready")
        assert ready.status_code == 200, model


def test_grpc_chat_streams_a_tool_call(cpu_triton: RunningTriton, files: ModelFiles) -> None:  # noqa: F811
    req = ChatRequest(USER, tools=TOOLS, max_tokens=200)
    assert_scripted_tool_call(grpc_chat(cpu_triton.server.grpc_url, req), files, req)


def test_http_generate_stream(cpu_triton: RunningTriton, files: ModelFiles) -> None:  # noqa: F811
    req = ChatRequest(USER, tools=TOOLS, max_tokens=200)
    body = {"messages": json.dumps(USER), "tools": json.dumps(TOOLS), "max_tokens": 200}
    url = f"http://{cpu_triton.server.http_url}/v2/models/{spec.CHAT_MODEL}/generate_stream"
    events = []
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    chunks = [
        ChatChunk(
            content=e["content"],
            tool_calls=json.loads(e["tool_calls"]),
            finish_reason=e["finish_reason"] or None,
            prompt_tokens=e["prompt_tokens"],
            completion_tokens=e["completion_tokens"],
            stop_sequence=e["stop_sequence"] or None,
        )
        for e in events
    ]
    assert_scripted_tool_call(chunks, files, req)
    assert all(c.stop_sequence is None for c in chunks)


def test_rejection_names_the_field(cpu_triton: RunningTriton) -> None:  # noqa: F811
    stream = Stream(cpu_triton.server.grpc_url)
    try:
        stream.send(spec.CHAT_MODEL, chat_inputs(ChatRequest(USER, max_tokens=0)))
        with pytest.raises(Exception) as info:
            list(stream.read())
    finally:
        stream.close()
    exc = parse_rejection(str(info.value))
    assert exc is not None and exc.field == "max_tokens", str(info.value)


def test_stop_string(cpu_triton: RunningTriton) -> None:  # noqa: F811
    req = ChatRequest(USER, tools=TOOLS, max_tokens=200, stop=("weather",))
    chunks = grpc_chat(cpu_triton.server.grpc_url, req)
    assert "".join(c.content for c in chunks) == "Let me check the "
    assert chunks[-1].finish_reason == "stop" and not any(c.tool_calls for c in chunks)
    assert [c.stop_sequence for c in chunks] == [None] * (len(chunks) - 1) + ["weather"]


def test_client_cancel_stops_generation(cpu_triton: RunningTriton) -> None:  # noqa: F811
    server = cpu_triton.server
    stream = Stream(server.grpc_url)
    stream.send(spec.CHAT_MODEL, chat_inputs(ChatRequest(USER, tools=TOOLS, max_tokens=200)))
    first, final = next(stream.read())
    assert first["content"][0] and not final
    stream.close(cancel=True)
    deadline = time.monotonic() + 20
    wanted = ("cancelled by the client", "k2trt: generation")
    while not all(w in server.log_text() for w in wanted):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    key = server.log_text().split("k2trt: chat request ")[1].split()[0]
    assert f"k2trt: generation {key} cancelled" in server.log_text()
    assert grpcclient.InferenceServerClient(server.grpc_url).is_server_ready()


def test_llm_as_the_openai_frontend_calls_it(cpu_triton: RunningTriton, files: ModelFiles) -> None:  # noqa: F811
    """[[value]] inputs (a batch dimension), stream false: one response with the text."""

    def item(name: str, value: Any, dtype: str) -> grpcclient.InferInput:
        array = np.asarray(value)
        out = grpcclient.InferInput(name, list(array.shape), dtype)
        out.set_data_from_numpy(array)
        return out

    prompt = "<|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>assistant<|im_middle|>"
    inputs = [
        item("text_input", np.array([[prompt.encode()]], dtype=np.object_), "BYTES"),
        item("stream", np.array([[False]]), "BOOL"),
        item("max_tokens", np.int32([[3]]), "INT32"),
        item("temperature", np.float32([[0]]), "FP32"),
        item("top_p", np.float32([[1]]), "FP32"),
        item("seed", np.uint64([[1]]), "UINT64"),
        item("stop_words", np.array([[b"<never>"]], dtype=np.object_), "BYTES"),
        item("return_num_input_tokens", np.array([[True]]), "BOOL"),
        item("return_num_output_tokens", np.array([[True]]), "BOOL"),
    ]
    stream = Stream(cpu_triton.server.grpc_url)
    try:
        stream.send(spec.LLM_MODEL, inputs)
        [(out, final)] = list(stream.read())
    finally:
        stream.close()
    ids = out["output_ids"].reshape(-1).tolist()
    assert final and len(ids) == 3 == int(out["num_output_tokens"].reshape(-1)[0])
    assert out["text_output"].shape == (1, 1)
    assert out["text_output"][0, 0].decode() == files.tokenizer.decode(
        ids, skip_special_tokens=True
    )
    prompt_len = len(files.tokenizer.encode_with_specials(prompt))
    assert int(out["num_input_tokens"].reshape(-1)[0]) == prompt_len
    assert out["finish_reason"][0, 0] == b"length"


def _drain_script(url: str, files: ModelFiles) -> None:
    """Play out the scripted replies left (each generation takes one; the tests using them may
    run in any order), so the next generation is the real tiny model's."""
    scripted_first = files.tokenizer.encode_with_specials(REPLY)[0]
    for _ in range(SCRIPTED_REPLIES + 1):
        stream = Stream(url)
        try:
            ids = np.array([[1, 2, 3]], dtype=np.int32)
            item = grpcclient.InferInput("input_ids", list(ids.shape), "INT32")
            item.set_data_from_numpy(ids)
            stream.send(spec.LLM_MODEL, [item, _one("max_tokens", np.int32([[1]]), "INT32")])
            [(out, _)] = list(stream.read())
        finally:
            stream.close()
        if out["output_ids"].reshape(-1).tolist() != [scripted_first]:
            return


def _one(name: str, array: Any, dtype: str) -> grpcclient.InferInput:
    out = grpcclient.InferInput(name, list(array.shape), dtype)
    out.set_data_from_numpy(array)
    return out


def test_unscripted_greedy_equals_the_reference_engine(
    cpu_triton: RunningTriton,  # noqa: F811
    files: ModelFiles,
) -> None:
    _drain_script(cpu_triton.server.grpc_url, files)
    req = ChatRequest([{"role": "user", "content": "Say something."}], max_tokens=12, temperature=0)
    chunks = grpc_chat(cpu_triton.server.grpc_url, req)
    prepared = prepare(files, req)
    ids = list(
        ReferenceEngine.load(cpu_triton.checkpoint).generate(prepared.prompt_ids, prepared.sampling)
    )
    ref = DeltaStream(files, req, len(prepared.prompt_ids))
    want = [*ref.feed(ids), ref.finish("length" if len(ids) == 12 else None)]
    assert "".join(c.content for c in chunks) == "".join(c.content for c in want)
    assert chunks[-1] == want[-1]
    assert chunks[-1].completion_tokens == len(ids)
