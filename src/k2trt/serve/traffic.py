"""Closed-loop chat traffic in a thread: who answered, when, and what failed.

What the rollout proof and bench measure a deploy with: `streams` chats back to back through a
ChatBackend (the Triton `chat` model over gRPC), each request's start, end, prompt tokens (a
template change shows there) and error kept. Bounded: at most `cap` requests are recorded,
and stopping joins the thread.

    with ChatTraffic(lambda: TritonBackend("127.0.0.1:8001"), streams=2) as traffic:
        deploy(...)
    assert traffic.failures() == []
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from k2trt.runtime.types import ChatBackend, ChatRequest
from k2trt.serve.answer import Answer

HELLO = ChatRequest([{"role": "user", "content": "Hello!"}], max_tokens=4)


@dataclass(frozen=True)
class Done:
    """One finished request (monotonic seconds)."""

    start: float
    end: float
    prompt_tokens: int
    error: str  # "" when it was answered


class ChatTraffic:
    """`streams` chats back to back, in one thread with its own event loop, until stopped."""

    def __init__(
        self,
        backend: Callable[[], ChatBackend],
        streams: int = 2,
        request: ChatRequest = HELLO,
        cap: int = 100_000,
    ) -> None:
        self.backend, self.streams, self.request, self.cap = backend, streams, request, cap
        self.done: list[Done] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        backend = self.backend()
        try:
            await asyncio.gather(*(self._loop(backend) for _ in range(self.streams)))
        finally:
            await backend.close()
            await asyncio.sleep(0.2)  # grpc.aio's poller delivers its last events first

    async def _loop(self, backend: ChatBackend) -> None:
        while not self.stop.is_set() and len(self.done) < self.cap:
            start, answer, error = time.monotonic(), Answer(), ""
            try:
                async for chunk in backend.stream(self.request):
                    answer.add(chunk)
                if answer.finish_reason not in ("stop", "length"):
                    error = f"finish_reason {answer.finish_reason}"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.done.append(Done(start, time.monotonic(), answer.prompt_tokens, error))

    def start(self, flowing: int = 10, timeout_s: float = 60.0) -> ChatTraffic:
        """Start, and return once `flowing` requests have finished (RuntimeError if
        the traffic does not flow within `timeout_s`)."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while len(self.done) < flowing:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"chat traffic is not flowing: {self.done[-3:]}")
            time.sleep(0.05)
        return self

    def finish(self, linger_s: float = 0.3, timeout_s: float = 60.0) -> None:
        """Let a few more requests run, then stop and join the thread."""
        time.sleep(linger_s)
        self.stop.set()
        self.thread.join(timeout=timeout_s)
        if self.thread.is_alive():
            raise RuntimeError(f"chat traffic did not stop within {timeout_s:g} s")

    def __enter__(self) -> ChatTraffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def failures(self) -> list[str]:
        return [d.error for d in self.done if d.error]

    def between(self, t0: float, t1: float) -> list[Done]:
        """Requests that ran (at least partly) between t0 and t1."""
        return [d for d in self.done if d.end >= t0 and d.start <= t1]

    def summary(self) -> dict[str, Any]:
        return {"requests": len(self.done), "failed": len(self.failures())}
