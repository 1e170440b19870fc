"""The in-process chat backend: an engine run in a worker thread behind asyncio.

`stream()` prepares the request at once (so RequestRejected is raised before any chunk),
then, when iterated, runs the engine in a thread that hands ids to the event loop; the
iterator turns them into chunks with `DeltaStream`. Closing the iterator (the client went
away), a stop string or `close()` sets the request's cancel flag, which the engine checks
every token. At most `max_concurrency` generations run at once; more wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from k2trt.chat.grammar_engine import ToolGrammar
from k2trt.errors import K2Error
from k2trt.runtime.chat import ModelFiles, Prepared, prepare
from k2trt.runtime.constrain import constrain, grammar_for
from k2trt.runtime.deltas import DeltaStream
from k2trt.runtime.types import BackendUnavailable, ChatChunk, ChatRequest, Engine

JOIN_TIMEOUT_S = 5.0  # close() waits this long for each engine thread to notice the flag


@dataclass(frozen=True)
class _End:
    """The engine finished (error: what it raised)."""

    error: Exception | None = None


_Item = int | _End


class LocalBackend:
    """A ChatBackend over an in-process Engine (CPU reference or scripted).

    >>> backend = LocalBackend.load("tiny")  # doctest: +SKIP
    >>> async for chunk in backend.stream(ChatRequest([{"role": "user", "content": "hi"}])):
    ...     print(chunk.content, chunk.finish_reason)  # doctest: +SKIP
    """

    def __init__(
        self,
        files: ModelFiles,
        engine: Engine,
        max_concurrency: int = 1,
        grammar: ToolGrammar | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise K2Error(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.files = files
        self.engine = engine
        self.model_id = files.model_id
        self.max_context = files.max_context
        self.max_concurrency = max_concurrency
        self.grammar = grammar  # tool-call grammar (k2trt.runtime.constrain); None: off
        # Made on first use, per event loop: an asyncio.Semaphore belongs to one loop, and a
        # backend may outlive one (tests, a CLI calling asyncio.run more than once).
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._running: dict[threading.Thread, threading.Event] = {}
        self._closed = False

    @classmethod
    def load(
        cls, ckpt: str | Path, model_id: str | None = None, tool_grammar: str | None = None
    ) -> LocalBackend:
        """Model files and the CPU engine (`engine_for`: $K2TRT_SCRIPT honoured) of `ckpt`;
        `tool_grammar` off | auto | strict (default $K2TRT_TOOL_GRAMMAR, else auto)."""
        from k2trt.runtime.reference import engine_for

        files = ModelFiles.load(ckpt, model_id)
        return cls(files, engine_for(ckpt), grammar=grammar_for(files, tool_grammar))

    async def ready(self) -> bool:
        """True until `close()`."""
        return not self._closed

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Chunks of one answer, the last with finish_reason and usage.

        Raises RequestRejected here, before anything runs; BackendUnavailable once closed.
        """
        if self._closed:
            raise BackendUnavailable(f"{self.model_id}: backend is closed")
        prepared = constrain(prepare(self.files, request), request, self.grammar)
        return self._chunks(request, prepared)

    async def close(self) -> None:
        """Cancel running generations and wait (briefly) for their threads."""
        self._closed = True
        for cancel in self._running.values():
            cancel.set()
        for thread in list(self._running):
            await asyncio.to_thread(thread.join, JOIN_TIMEOUT_S)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.max_concurrency))
        return self._slots[1]

    async def _chunks(self, request: ChatRequest, prepared: Prepared) -> AsyncIterator[ChatChunk]:
        async with self._semaphore():
            if self._closed:
                raise BackendUnavailable(f"{self.model_id}: backend is closed")
            queue: asyncio.Queue[_Item] = asyncio.Queue()
            cancel = threading.Event()
            thread = self._start(prepared, cancel, _putter(asyncio.get_running_loop(), queue))
            out = DeltaStream(self.files, request, len(prepared.prompt_ids))
            generated = 0
            try:
                while True:
                    ids, end = await _drain(queue)
                    generated += len(ids)
                    for chunk in out.feed(ids) if ids else ():
                        yield chunk
                    if out.done:
                        break
                    if end is not None:
                        if end.error is not None:
                            raise end.error
                        break
                full = not out.done and generated >= prepared.sampling.max_tokens
                yield out.finish("length" if full else None)
            finally:
                cancel.set()
                self._running.pop(thread, None)

    def _start(
        self, prepared: Prepared, cancel: threading.Event, put: Callable[[_Item], None]
    ) -> threading.Thread:
        thread = threading.Thread(
            target=self._produce,
            args=(prepared, cancel, put),
            name=f"k2trt-engine-{self.model_id}",
            daemon=True,
        )
        self._running[thread] = cancel
        thread.start()
        return thread

    def _produce(
        self, prepared: Prepared, cancel: threading.Event, put: Callable[[_Item], None]
    ) -> None:
        """Worker thread: run the engine until it ends or the flag is set."""
        error: Exception | None = None
        try:
            ids = self.engine.generate(prepared.prompt_ids, prepared.sampling, cancel.is_set)
            try:
                for token in ids:
                    put(token)
                    if cancel.is_set():
                        break
            finally:
                close = getattr(ids, "close", None)  # a generator: run its cleanup (locks)
                if close is not None:
                    close()
        except Exception as exc:  # handed to the event loop, raised to the reader there
            error = exc
        finally:
            put(_End(error))


def _putter(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Item]
) -> Callable[[_Item], None]:
    def put(item: _Item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    return put


async def _drain(queue: asyncio.Queue[_Item]) -> tuple[list[int], _End | None]:
    """Wait for at least one item, then take everything already there (one chunk per batch)."""
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    ids = [i for i in items if isinstance(i, int)]
    end = next((i for i in items if isinstance(i, _End)), None)
    return ids, end
