"""The release smoke gate through any model name, over Triton's synchronous gRPC client.

The gate: a forced `get_weather` tool call, its result sent back and the model's answer, then
a plain chat turn. `k2trt release build` runs it through the served package's `chat` model
(`release.gates`), `k2trt release deploy` through the canary model before clients reach a new
version. It talks to Triton with tritonclient's thread-based streaming client,
not grpc.aio: grpc.aio delivers every call's events through one poller per process, and a
second event loop that closes while another is streaming (a deploy run from a program that
serves chats itself, as the tests and the rollout bench do) broke the other loop's streams
(GOAWAY, then hung calls) on grpcio 1.85. A thread and a queue per call have no such tie.

    >>> smoke("127.0.0.1:8001", "k2trt-canary", 60)["status"]  # doctest: +SKIP
    'pass'
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from typing import Any

from tritonclient import grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from k2trt.runtime.types import ChatBackend, ChatChunk, ChatRequest
from k2trt.runtime.wire import CHAT_OUTPUTS, request_to_inputs
from k2trt.serve.answer import Answer
from k2trt.serve.demo import TOOLS, WEATHER  # the demo's get_weather tool and its result
from k2trt.serve.triton_backend import is_final, model_error, response_chunk

POLL_S = 0.25
FORCED = {"type": "function", "function": {"name": "get_weather"}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
MAX_TOKENS = 64
CHAT_TOKENS = 8


class StreamClient:
    """A ChatBackend over one Triton model, each request a synchronous gRPC stream.

    >>> StreamClient("127.0.0.1:8001", "chat", 30).model
    'chat'
    """

    max_context = 0  # the model enforces it

    def __init__(self, url: str, model: str, timeout_s: float, model_id: str = "smoke") -> None:
        self.url, self.model, self.timeout_s, self.model_id = url, model, timeout_s, model_id

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing is held between requests."""

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self._chunks(request)

    async def _chunks(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client = grpcclient.InferenceServerClient(self.url)
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            client.async_stream_infer(
                model_name=self.model,
                inputs=_inputs(request),
                outputs=[grpcclient.InferRequestedOutput(f.name) for f in CHAT_OUTPUTS],
                enable_empty_final_response=True,
            )
            while True:
                result, error = await self._next(results)
                if error is not None:
                    raise model_error(str(error.message() if hasattr(error, "message") else error))
                response = result.get_response()
                chunk = response_chunk(response)
                if chunk is not None:
                    yield chunk
                if is_final(response):
                    return
        finally:
            client.stop_stream(cancel_requests=True)
            client.close()

    async def _next(self, results: queue.Queue[tuple[Any, Any]]) -> tuple[Any, Any]:
        """The stream's next (result, error), waited for in short steps (an executor thread
        never outlives the call by more than one step)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while loop.time() < deadline:
            try:
                return await loop.run_in_executor(None, results.get, True, POLL_S)
            except queue.Empty:
                continue
        raise TimeoutError(f"{self.model}: no response within {self.timeout_s:g} s")


def _inputs(request: ChatRequest) -> list[Any]:
    """The chat model's input tensors for one request."""
    tensors = []
    for name, array in request_to_inputs(request).items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def smoke(grpc_url: str, model: str, timeout_s: float) -> dict[str, Any]:
    """The release smoke gate through `model`; a failed report when it raises or takes
    longer than `timeout_s` in all."""
    try:
        return asyncio.run(
            asyncio.wait_for(_smoke(StreamClient(grpc_url, model, timeout_s)), timeout_s)
        )
    except (asyncio.TimeoutError, TimeoutError):
        failure = f"no answer within {timeout_s:g} s"
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
    return {"gate": "smoke", "status": "fail", "figures": {}, "failures": [failure]}


async def _turn(backend: ChatBackend, request: ChatRequest) -> Answer:
    answer = Answer()
    stream = backend.stream(request)
    async for chunk in stream:
        answer.add(chunk)
    return answer


async def _smoke(backend: ChatBackend) -> dict[str, Any]:
    try:
        first = await _turn(
            backend, ChatRequest(QUESTION, TOOLS, FORCED, max_tokens=MAX_TOKENS, temperature=0.0)
        )
        calls = first.tool_calls()
        failures = _call_failures(first, calls)
        answer = Answer()
        if not failures:
            history = [*QUESTION, _assistant(first, calls), _tool_result(calls[0])]
            answer = await _turn(
                backend, ChatRequest(history, TOOLS, max_tokens=MAX_TOKENS, temperature=0.0)
            )
            if answer.finish_reason not in ("stop", "length") or not answer.content.strip():
                failures.append(
                    f"answer after the tool result: finish {answer.finish_reason}, "
                    f"content {answer.content!r}"
                )
        hello = [{"role": "user", "content": "Hello!"}]
        chat = await _turn(backend, ChatRequest(hello, max_tokens=CHAT_TOKENS, temperature=0.0))
        if chat.completion_tokens < 1 or chat.finish_reason not in ("stop", "length"):
            failures.append(
                f"chat turn: {chat.completion_tokens} tokens, finish {chat.finish_reason}"
            )
    finally:
        await backend.close()
    figures = {
        "tool_call": calls[0]["function"] if calls else None,
        "tool_finish_reason": first.finish_reason,
        "answer": answer.content,
        "answer_finish_reason": answer.finish_reason,
        "chat_completion_tokens": chat.completion_tokens,
        "chat_finish_reason": chat.finish_reason,
        "prompt_tokens": first.prompt_tokens,
    }
    status = "fail" if failures else "pass"
    return {"gate": "smoke", "status": status, "figures": figures, "failures": failures}


def _call_failures(first: Answer, calls: list[dict[str, Any]]) -> list[str]:
    if first.finish_reason != "tool_calls" or len(calls) != 1:
        return [
            f"tool call: finish {first.finish_reason}, {len(calls)} call(s), expected one "
            f"get_weather call"
        ]
    fn = calls[0]["function"]
    try:
        args = json.loads(fn["arguments"])
    except json.JSONDecodeError:
        return [f"tool call: arguments are not JSON: {fn['arguments']!r}"]
    if (
        fn["name"] != "get_weather"
        or not isinstance(args, dict)
        or not isinstance(args.get("city"), str)
    ):
        return [f"tool call: {fn['name']}({fn['arguments']}) does not match get_weather(city)"]
    return []


def _assistant(first: Answer, calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {"role": "assistant", "content": first.content, "tool_calls": calls}


def _tool_result(call: dict[str, Any]) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(WEATHER)}
