"""The Triton backend over real gRPC, against a conforming server built from tritonclient's
`service_pb2_grpc` stubs: it speaks KServe v2 `ModelStreamInfer` exactly as Triton does for
the decoupled `chat` model (tensors per `runtime.wire`, `triton_final_response` on every
response, an empty final response when asked, model errors as `error_message`) with a
scripted backend behind it. The real tritonserver runs in the `triton`-marked test."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import numpy as np
import openai
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

from k2trt.runtime.types import BackendUnavailable, ChatChunk, ChatRequest, RequestRejected
from k2trt.runtime.wire import (
    CHAT_MODEL,
    CHAT_OUTPUTS,
    CLIENT_TYPES,
    chunk_to_outputs,
    inputs_to_request,
    rejection_message,
)
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.scripted import ScriptedBackend
from k2trt.serve.server import ServerThread
from k2trt.serve.triton_backend import EMPTY_FINAL, FINAL, TritonBackend, TritonError, model_error
from triton_fixtures import require_cpu_triton, tiny_package  # noqa: F401  (fixture)

CALL = (
    "Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'
)
HELLO = [{"role": "user", "content": "hi"}]
OUTPUT_TYPES = {f.name: CLIENT_TYPES[f.triton_type] for f in CHAT_OUTPUTS}


def decode_inputs(request: Any) -> dict[str, Any]:
    arrays = {}
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        if tensor.datatype == "BYTES":
            value = deserialize_bytes_tensor(raw)
        else:
            value = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype))
        arrays[tensor.name] = value.reshape(list(tensor.shape))
    return arrays


def encode(chunk: ChatChunk | None, final: bool) -> Any:
    response = service_pb2.ModelInferResponse(model_name=CHAT_MODEL)
    for name, array in (chunk_to_outputs(chunk) if chunk else {}).items():
        kind = OUTPUT_TYPES[name]
        response.outputs.add(name=name, datatype=kind, shape=list(array.shape))
        raw = serialize_byte_tensor(array).item() if kind == "BYTES" else array.tobytes()
        response.raw_output_contents.append(raw)
    response.parameters[FINAL].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=response)


class ChatService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's side of the gRPC protocol for the `chat` model, over a scripted backend."""

    def __init__(self, backend: ScriptedBackend, empty_final: bool = False) -> None:
        self.backend = backend
        self.empty_final = empty_final  # the last chunk unflagged, then an empty final response
        self.model_ready = True
        self.error: str | None = None  # sent instead of an answer
        self.requests: list[ChatRequest] = []
        self.parameters: list[dict[str, Any]] = []

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=self.model_ready and request.name == CHAT_MODEL)

    async def ModelStreamInfer(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if not self.model_ready:
                text = f"Request for unknown model: '{request.model_name}' is not found"
                yield service_pb2.ModelStreamInferResponse(error_message=text)
                continue
            self.parameters.append({k: v.bool_param for k, v in request.parameters.items()})
            if self.error is not None:
                yield service_pb2.ModelStreamInferResponse(error_message=self.error)
                continue
            chat = inputs_to_request(decode_inputs(request))
            self.requests.append(chat)
            try:
                chunks = self.backend.stream(chat)
            except RequestRejected as exc:  # as the chat model reports a bad request
                text = rejection_message(exc)
                yield service_pb2.ModelStreamInferResponse(error_message=text)
                continue
            async for chunk in chunks:
                yield encode(chunk, chunk.finish_reason is not None and not self.empty_final)
            if self.empty_final:
                yield encode(None, True)


async def start_grpc(service: ChatService) -> tuple[Any, str]:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def collect(backend: TritonBackend, request: ChatRequest) -> list[ChatChunk]:
    return [c async for c in backend.stream(request)]


def raw_request(url: str, body: dict[str, Any]) -> socket.socket:
    """A POST on a plain socket, so the test decides when the connection drops."""
    where = urlparse(url)
    sock = socket.create_connection((where.hostname, where.port))
    data = json.dumps(body).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    sock.sendall(head.encode() + f"content-length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def run_with_server(service: ChatService, test: Any) -> Any:
    """asyncio.run(test(backend, server)) with the service listening."""

    async def main() -> Any:
        server, url = await start_grpc(service)
        backend = TritonBackend(url)
        try:
            return await test(backend, server)
        finally:
            await backend.close()
            await server.stop(0)

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# The backend


@pytest.mark.parametrize("empty_final", [False, True])
def test_stream_round_trips_request_and_chunks(empty_final: bool) -> None:
    scripted = ScriptedBackend([CALL])
    service = ChatService(scripted, empty_final)
    request = ChatRequest(
        messages=HELLO,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=50,
        temperature=0.3,
        top_p=0.9,
        seed=5,
        stop=("END",),
    )

    async def test(backend: TritonBackend, server: Any) -> list[ChatChunk]:
        assert await backend.ready()
        return await collect(backend, request)

    chunks = run_with_server(service, test)
    assert service.requests == [request]
    assert service.parameters == [{EMPTY_FINAL: True}]
    expected = asyncio.run(collect_scripted(ScriptedBackend([CALL]), request))
    assert chunks == expected
    assert chunks[-1].finish_reason == "tool_calls"


async def collect_scripted(backend: ScriptedBackend, request: ChatRequest) -> list[ChatChunk]:
    return [c async for c in backend.stream(request)]


def test_ready_needs_the_server_and_the_model() -> None:
    service = ChatService(ScriptedBackend())

    async def test(backend: TritonBackend, server: Any) -> list[bool]:
        states = [await backend.ready()]
        service.model_ready = False
        states.append(await backend.ready())
        await server.stop(0)
        states.append(await backend.ready())
        return states

    assert run_with_server(service, test) == [True, False, False]


@pytest.mark.parametrize(
    ("error", "kind", "detail"),
    [
        (
            "in 'chat': request rejected (messages): the prompt is 9 tokens; the context is 8",
            RequestRejected,
            "the prompt is 9 tokens; the context is 8",
        ),
        (
            "chat failed: RuntimeError: engine crashed",
            TritonError,
            "chat failed: RuntimeError: engine crashed",
        ),
    ],
)
def test_model_errors(error: str, kind: type[Exception], detail: str) -> None:
    service = ChatService(ScriptedBackend())
    service.error = error

    async def test(backend: TritonBackend, server: Any) -> Exception:
        with pytest.raises(kind) as info:
            await collect(backend, ChatRequest(HELLO))
        return info.value

    exc = run_with_server(service, test)
    assert str(exc) == detail
    if isinstance(exc, RequestRejected):
        assert exc.field == "messages"


def test_unavailable_model_or_server() -> None:
    service = ChatService(ScriptedBackend())
    service.model_ready = False

    async def test(backend: TritonBackend, server: Any) -> list[str]:
        messages = []
        with pytest.raises(BackendUnavailable) as gone_model:
            await collect(backend, ChatRequest(HELLO))
        messages.append(str(gone_model.value))
        await server.stop(0)
        with pytest.raises(BackendUnavailable) as gone_server:
            await collect(backend, ChatRequest(HELLO))
        messages.append(str(gone_server.value))
        return messages

    model, server = run_with_server(service, test)
    assert "is not found" in model
    assert server.startswith("triton: ")


def test_closing_the_stream_cancels_the_triton_request() -> None:
    scripted = ScriptedBackend(["word " * 100], delay_s=0.05)
    service = ChatService(scripted)

    async def test(backend: TritonBackend, server: Any) -> float:
        chunks = backend.stream(ChatRequest(HELLO))
        await anext(chunks)
        await anext(chunks)
        await chunks.aclose()
        closed = time.monotonic()
        while not scripted.cancelled and time.monotonic() - closed < 1:
            await asyncio.sleep(0.01)
        assert scripted.cancelled, "the server kept generating after the client closed"
        return scripted.cancelled[0] - closed

    assert run_with_server(service, test) < 1.0


# ---------------------------------------------------------------------------------------------
# The gateway over Triton


class GrpcThread:
    """The conforming server on its own event loop in a thread (the gateway has another)."""

    def __init__(self, service: ChatService) -> None:
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        self.server, url = asyncio.run_coroutine_threadsafe(
            start_grpc(self.service), self.loop
        ).result(10)
        return url

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def gateway_over_triton() -> Iterator[tuple[openai.OpenAI, ChatService]]:
    service = ChatService(ScriptedBackend([CALL, "It is sunny."], max_context=40))
    with GrpcThread(service) as url:
        app = create_app(TritonBackend(url, model_id="kimi-k2"), ServeConfig(ready_ttl_s=0))
        with ServerThread(app) as server:
            yield openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0), service


def test_openai_sdk_through_triton(gateway_over_triton: tuple[openai.OpenAI, ChatService]) -> None:
    client, service = gateway_over_triton
    stream = client.chat.completions.create(model="kimi-k2", messages=HELLO, stream=True)
    chunks = list(stream)
    names = [
        d.function.name for c in chunks for d in c.choices[0].delta.tool_calls or () if d.function
    ]
    assert [n for n in names if n] == ["get_weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    reply = client.chat.completions.create(model="kimi-k2", messages=HELLO)
    assert (reply.model, reply.choices[0].message.content) == ("kimi-k2", "It is sunny.")
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model="kimi-k2", messages=[{"role": "user", "content": "word " * 100}]
        )
    assert too_long.value.param == "messages"
    service.model_ready = False
    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(model="kimi-k2", messages=HELLO)
    assert down.value.status_code == 503


def test_rejection_text_of_the_chat_model_is_a_rejection() -> None:
    text = rejection_message(RequestRejected("max_tokens must be at least 1", "max_tokens"))
    exc = model_error(f"in model 'chat': {text}")
    assert isinstance(exc, RequestRejected)
    assert (exc.field, str(exc)) == ("max_tokens", "max_tokens must be at least 1")


# ---------------------------------------------------------------------------------------------
# The real tritonserver (CPU build from nvidia-pytriton) serving the packaged repository with
# the CPU stand-in for tensorrt_llm: the gateway's Triton path end to end.

STOPPED = "Sunny, then rain."
REAL_REPLIES = [CALL, "It is sunny.", CALL, "It is sunny.", STOPPED, STOPPED, "word " * 300]
REAL_TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


@pytest.mark.triton
@pytest.mark.slow
def test_gateway_over_the_real_cpu_triton(tiny_package: Path, tmp_path: Path) -> None:  # noqa: F811
    require_cpu_triton()
    import anthropic

    from k2trt.triton_repo.cpu_server import CpuTritonServer
    from k2trt.triton_repo.repository import REPOSITORY_DIR

    script = tmp_path / "script.json"
    script.write_text(json.dumps({"replies": REAL_REPLIES, "delay_s": 0.02}))
    repo = tiny_package / REPOSITORY_DIR
    with CpuTritonServer(repo, env={"K2TRT_SCRIPT": str(script)}) as triton:
        backend = TritonBackend(triton.grpc_url, model_id="kimi-k2")
        with ServerThread(create_app(backend)) as gateway:
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
            first = client.chat.completions.create(model="m", messages=HELLO, tools=REAL_TOOLS)
            [call] = first.choices[0].message.tool_calls or []
            assert (first.choices[0].finish_reason, call.function.name) == (
                "tool_calls",
                "get_weather",
            )
            result = {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
            history = [*HELLO, first.choices[0].message.model_dump(exclude_none=True), result]
            final = client.chat.completions.create(model="m", messages=history, tools=REAL_TOOLS)
            assert final.choices[0].message.content == "It is sunny."

            claude = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
            tools: Any = [{"name": "get_weather", "input_schema": {"type": "object"}}]
            with claude.messages.stream(
                model="m", max_tokens=100, messages=HELLO, tools=tools
            ) as s:
                message = s.get_final_message()
            assert message.stop_reason == "tool_use"
            use = message.content[-1]
            assert use.type == "tool_use" and use.input == {"city": "Paris"}
            answer = claude.messages.create(
                model="m",
                max_tokens=100,
                tools=tools,
                messages=[
                    *HELLO,
                    {"role": "assistant", "content": [b.model_dump() for b in message.content]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}
                        ],
                    },
                ],
            )
            assert answer.content[0].type == "text" and answer.content[0].text == "It is sunny."

            # A stop sequence, cut by the chat model and named all the way to the client.
            kw: Any = {"model": "m", "max_tokens": 50, "messages": HELLO}
            kw["stop_sequences"] = ["then rain"]
            stopped = claude.messages.create(**kw)
            with claude.messages.stream(**kw) as s:
                streamed = s.get_final_message()
            for reply in (stopped, streamed):
                assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", "then rain")
                assert [getattr(b, "text", None) for b in reply.content] == ["Sunny, "]

            # The client leaves mid-stream: Triton's chat model must hear of it.
            sock = raw_request(gateway.url, {"messages": HELLO, "stream": True})
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.close()
            deadline = time.monotonic() + 10
            while "cancelled by the client" not in triton.log_text():
                assert time.monotonic() < deadline, triton.log_text()[-3000:]
                time.sleep(0.05)
