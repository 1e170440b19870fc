"""Connection guards under uvicorn's HTTP/1.1 protocol: a header timeout and a connection cap.

Slow or idle clients must not hold file descriptors without bound: a connection that has not
sent complete request headers within `header_timeout_s` (from its opening, or from the end of
its previous response) is closed, and past `max_connections` open connections a new one
evicts the oldest connection that is not serving a request (or, when every one is, is closed
itself). So /health keeps answering while a thousand clients dribble bytes.

uvicorn itself has a keep-alive timeout (idle connections between requests) but nothing for a
connection that never finishes its headers, and its `limit_concurrency` answers requests 503
rather than freeing descriptors. The request body has its own timeout (see body.py).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("k2trt.serve")
FD_HEADROOM = 64  # descriptors kept for files, the backend's sockets and the listener


def fd_capped(max_connections: int) -> int:
    """`max_connections`, lowered to fit the process's open-file limit (minus headroom)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - FD_HEADROOM))


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the guards above; the limits are read from the uvicorn
    config's `header_timeout_s` and `max_connections` (see server.make_config), so the class
    stays importable by name (worker processes unpickle the config)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s: float = getattr(self.config, "header_timeout_s", 10.0)
        self.max_connections: int = getattr(self.config, "max_connections", 1024)
        self._opened = time.monotonic()
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._evict_one():
            log.warning("refused a connection: %d open (--max-connections)", self.max_connections)
            self.transport.close()
            return
        self._arm()

    def _evict_one(self) -> bool:
        """Close the oldest connection that is not serving a request; False if there is none."""
        idle = [
            c
            for c in self.connections
            if isinstance(c, GuardedProtocol) and c is not self and c._waiting_for_headers()
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._opened)
        oldest._close("evicted: too many open connections (--max-connections)")
        return True

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def _arm(self) -> None:
        if self._header_timer is None and self._waiting_for_headers():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers():
            self._close(f"no complete request headers within {self.header_timeout_s:g} s")

    def _close(self, why: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            log.debug("closing %s: %s", self.client, why)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_headers():
            self._arm()
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request's headers are timed from here

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
