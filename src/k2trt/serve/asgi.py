"""ASGI plumbing for the gateway: what one exchange records, whole JSON responses, work
cancelled when the client disconnects, and closing a backend stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Send

from k2trt.runtime.types import ChatChunk
from k2trt.serve.answer import dumps

log = logging.getLogger("k2trt.serve")


@dataclass
class Exchange:
    """What the request log and the metrics learn about one HTTP exchange."""

    start: float
    status: int = 0
    complete: bool = False  # the last byte of the response is being sent
    disconnected: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    accounted: bool = False  # the answer's tokens and duration are in the metrics
    recorded: bool = False  # the request is logged and counted


def header_list(extra: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]


async def send_json(
    send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    """A whole JSON response."""
    data = dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    raw += header_list(headers or {})
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def until_disconnect(receive: Receive, work: Coroutine[Any, Any, None], ex: Exchange) -> None:
    """Run `work` in a task of its own, cancelled as soon as the client disconnects (sets
    `ex.disconnected`). Plain asyncio: a cancellation is delivered once, so `work` can still
    close the backend stream in its `finally`."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not ex.complete:
            ex.disconnected = True
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await task
    except asyncio.CancelledError:
        if not (ex.disconnected and task.cancelled()):
            raise  # cancelled from outside (the server's drain timeout): not ours to absorb
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def uncancel_current() -> None:
    """Absorb one cancellation of the current task (it was answered, not abandoned)."""
    uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11+
    if uncancel is not None:
        uncancel()


async def close_quietly(iterator: AsyncIterator[ChatChunk]) -> None:
    """Close a backend iterator: stops generation (a closed LocalBackend or Triton stream
    cancels its request)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("closing the backend stream failed")
