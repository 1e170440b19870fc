"""Admission control (bounded concurrency with a bounded FIFO queue) and cached readiness."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from k2trt.runtime.types import ChatBackend
from k2trt.serve.errors import ApiError
from k2trt.serve.metrics import Metrics


class Admission:
    """At most `max_concurrency` requests run; up to `max_queue` more wait in arrival order;
    beyond that a request is refused at once with 429 and Retry-After.

    A waiter that is cancelled (its client went away) leaves the queue.
    """

    def __init__(
        self, max_concurrency: int, max_queue: int, metrics: Metrics, retry_after_s: int = 1
    ) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._free = max_concurrency
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._metrics = metrics
        self._retry_after_s = retry_after_s

    @property
    def running(self) -> int:
        return self.max_concurrency - self._free

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _publish(self) -> None:
        self._metrics.in_flight.set(self.running)
        self._metrics.queue_depth.set(len(self._waiters))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with` (ApiError 429 when full)."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._publish()
            return
        if len(self._waiters) >= self.max_queue:
            raise ApiError(
                429,
                f"server busy: {self.running} requests running and {self.waiting} waiting "
                f"(--max-concurrency {self.max_concurrency}, --max-queue {self.max_queue})",
                code="rate_limit_exceeded",
                retry_after=self._retry_after_s,
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._publish()
        try:
            await waiter
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot it will not use: pass it on
            self._publish()
            raise
        self._publish()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter as is
                self._publish()
                return
        self._free += 1
        self._publish()


class Readiness:
    """`backend.ready()` at most once per `ttl_s` (a Triton check is a network round trip)."""

    def __init__(self, backend: ChatBackend, ttl_s: float = 1.0) -> None:
        self._backend = backend
        self._ttl_s = ttl_s
        self._ok = False
        self._checked = -float("inf")
        self._lock = asyncio.Lock()

    async def ready(self, fresh: bool = False) -> bool:
        """The cached answer, re-asked when older than the TTL (or `fresh`)."""
        if not fresh and time.monotonic() - self._checked < self._ttl_s:
            return self._ok
        async with self._lock:
            if fresh or time.monotonic() - self._checked >= self._ttl_s:
                try:
                    self._ok = bool(await self._backend.ready())
                except Exception:
                    self._ok = False
                self._checked = time.monotonic()
        return self._ok

    def down(self) -> None:
        """The backend just failed a request: not ready until the next check says so."""
        self._ok = False
        self._checked = time.monotonic()
