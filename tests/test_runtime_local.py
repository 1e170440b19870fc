"""LocalBackend: streaming, finish reasons, rejection before the first chunk, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from k2trt.runtime.chat import ModelFiles, prepare
from k2trt.runtime.local import LocalBackend
from k2trt.runtime.reference import ReferenceEngine
from k2trt.runtime.scripted import ScriptedEngine
from k2trt.runtime.types import (
    BackendUnavailable,
    ChatChunk,
    ChatRequest,
    Engine,
    RequestRejected,
    SamplingParams,
    never,
)

USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
CALL = (
    "Sure.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    '<|tool_call_argument_begin|>{"city": "Oslo"}<|tool_call_end|><|tool_calls_section_end|>'
)


@pytest.fixture(scope="module")
def files(tiny_ckpt: Path) -> ModelFiles:
    return ModelFiles.load(tiny_ckpt)


class Recording:
    """Wraps an engine; records each generation's start, end and ids handed out."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.started: list[float] = []
        self.ended: list[float] = []
        self.yielded = 0
        self.done = threading.Event()

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] = never,
    ) -> Iterator[int]:
        self.started.append(time.monotonic())
        try:
            for token in self.inner.generate(prompt_ids, params, cancelled):
                self.yielded += 1
                yield token
        finally:
            self.ended.append(time.monotonic())
            self.done.set()


async def collect(backend: LocalBackend, request: ChatRequest) -> list[ChatChunk]:
    return [chunk async for chunk in backend.stream(request)]


def test_streams_content_then_final_chunk(files: ModelFiles) -> None:
    # A small delay per token: ids arrive one by one (without it they may come in one batch,
    # which the backend turns into one chunk).
    engine = ScriptedEngine(files.tokenizer, ["Hello there, world!"], delay_s=0.005)
    backend = LocalBackend(files, engine)
    chunks = asyncio.run(collect(backend, ChatRequest(USER)))
    *deltas, last = chunks
    assert "".join(c.content for c in chunks) == "Hello there, world!"
    assert len(deltas) > 1 and all(c.finish_reason is None for c in deltas)
    prompt = len(files.tokenizer.encode("Hello there, world!")) + 1  # + <|im_end|>
    assert (last.finish_reason, last.completion_tokens) == ("stop", prompt)
    assert last.prompt_tokens > 0
    assert (backend.model_id, backend.max_context) == ("tiny", 131072)


def test_tool_call_over_the_backend(files: ModelFiles) -> None:
    backend = LocalBackend(files, ScriptedEngine(files.tokenizer, [CALL]))
    chunks = asyncio.run(collect(backend, ChatRequest(USER, tools=TOOLS)))
    calls = [d for c in chunks for d in c.tool_calls]
    assert calls[0]["id"] == "functions.get_weather:0"
    assert "".join(d["function"]["arguments"] for d in calls[1:]) == '{"city": "Oslo"}'
    assert "".join(c.content for c in chunks) == "Sure."
    assert chunks[-1].finish_reason == "tool_calls"


def test_length_finish(files: ModelFiles) -> None:
    backend = LocalBackend(files, ScriptedEngine(files.tokenizer, ["one two three four five"]))
    chunks = asyncio.run(collect(backend, ChatRequest(USER, max_tokens=3)))
    assert (chunks[-1].finish_reason, chunks[-1].completion_tokens) == ("length", 3)
    assert "".join(c.content for c in chunks) == files.tokenizer.decode(
        files.tokenizer.encode("one two three four five")[:3]
    )


def test_rejected_before_anything_runs(files: ModelFiles) -> None:
    engine = Recording(ScriptedEngine(files.tokenizer, ["x"]))
    backend = LocalBackend(files, engine)
    with pytest.raises(RequestRejected) as exc:
        backend.stream(ChatRequest(USER, max_tokens=0))
    assert exc.value.field == "max_tokens"
    assert engine.started == []


def test_stop_string_stops_the_engine(files: ModelFiles) -> None:
    engine = Recording(ScriptedEngine(files.tokenizer, ["abc STOP " + "z " * 200], delay_s=0.002))
    backend = LocalBackend(files, engine)
    chunks = asyncio.run(collect(backend, ChatRequest(USER, stop=("STOP",))))
    assert "".join(c.content for c in chunks) == "abc "
    assert (chunks[-1].finish_reason, chunks[-1].stop_sequence) == ("stop", "STOP")
    assert all(c.stop_sequence is None for c in chunks[:-1])
    assert engine.done.wait(2.0)
    assert engine.yielded < 20  # not the 200-odd ids of the whole reply


def test_closing_the_stream_cancels_generation(files: ModelFiles) -> None:
    engine = Recording(ScriptedEngine(files.tokenizer, ["tok " * 400], delay_s=0.02))
    backend = LocalBackend(files, engine)

    async def first_then_close() -> float:
        stream = backend.stream(ChatRequest(USER))
        first = await stream.__anext__()
        assert first.content
        t0 = time.monotonic()
        await stream.aclose()  # type: ignore[attr-defined]
        return t0

    t0 = asyncio.run(first_then_close())
    assert engine.done.wait(1.0)
    assert engine.ended[0] - t0 < 0.5  # within a token or two of the close
    assert engine.yielded < 50


def test_close_cancels_and_refuses(files: ModelFiles) -> None:
    engine = Recording(ScriptedEngine(files.tokenizer, ["tok " * 400], delay_s=0.02))
    backend = LocalBackend(files, engine)

    async def scenario() -> tuple[bool, bool]:
        stream = backend.stream(ChatRequest(USER))
        await stream.__anext__()
        before = await backend.ready()
        await backend.close()
        return before, await backend.ready()

    assert asyncio.run(scenario()) == (True, False)
    assert engine.done.is_set()  # close() waited for the engine thread
    with pytest.raises(BackendUnavailable):
        backend.stream(ChatRequest(USER))


def test_engine_error_reaches_the_reader(files: ModelFiles) -> None:
    backend = LocalBackend(files, ScriptedEngine(files.tokenizer, []))
    with pytest.raises(RuntimeError, match="all 0 replies were played"):
        asyncio.run(collect(backend, ChatRequest(USER)))


def test_max_concurrency_queues_requests(files: ModelFiles) -> None:
    engine = Recording(ScriptedEngine(files.tokenizer, ["a b c d"] * 2, delay_s=0.01))
    backend = LocalBackend(files, engine, max_concurrency=1)

    async def both() -> None:
        await asyncio.gather(
            collect(backend, ChatRequest(USER)), collect(backend, ChatRequest(USER))
        )

    asyncio.run(both())
    assert len(engine.started) == 2
    assert engine.started[1] >= engine.ended[0]  # the second waited for the first


def test_reference_backend_greedy(tiny_ckpt: Path, files: ModelFiles) -> None:
    backend = LocalBackend.load(tiny_ckpt, model_id="tiny-ref")
    assert isinstance(backend.engine, ReferenceEngine)
    request = ChatRequest(USER, max_tokens=4, temperature=0.0)
    chunks = asyncio.run(collect(backend, request))
    prepared = prepare(files, request)
    ids = list(backend.engine.generate(prepared.prompt_ids, prepared.sampling))
    last = chunks[-1]
    assert backend.model_id == "tiny-ref"
    assert last.completion_tokens == len(ids)
    assert last.finish_reason == ("stop" if ids[-1] in files.stop_token_ids else "length")
    text = files.tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(c.content for c in chunks) == text


def test_backend_outlives_an_event_loop(files: ModelFiles) -> None:
    engine = ScriptedEngine(files.tokenizer, ["a b"] * 4, delay_s=0.002)
    backend = LocalBackend(files, engine, max_concurrency=1)

    async def two() -> list[list[ChatChunk]]:
        return list(
            await asyncio.gather(
                collect(backend, ChatRequest(USER)), collect(backend, ChatRequest(USER))
            )
        )

    for _ in range(2):  # the second asyncio.run has a new loop
        results = asyncio.run(two())
        assert ["".join(c.content for c in r) for r in results] == ["a b", "a b"]
