"""The gateway as one ASGI app: auth, body and token limits, admission, metrics, request log,
and the chat flow shared by the OpenAI and Anthropic routes.

A chat request: API key -> body (size-limited) -> JSON -> the API's checks (400 naming the
field) -> backend readiness (503) -> max_tokens cap -> a slot (429 when the queue is full)
-> the backend's first chunk (its errors still become proper HTTP statuses) -> the answer,
streamed as server-sent events or as one JSON body. A client that disconnects at any point
after its body arrived cancels the work within one event-loop turn: the backend iterator is
closed, which stops generation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from k2trt.runtime.types import (
    BackendUnavailable,
    ChatBackend,
    ChatChunk,
    ChatRequest,
    RequestRejected,
)
from k2trt.serve import anthropic_api, openai_api
from k2trt.serve.answer import Answer, ParsedChat
from k2trt.serve.asgi import (
    Exchange,
    close_quietly,
    send_json,
    uncancel_current,
    until_disconnect,
)
from k2trt.serve.body import ClientGone, parse_json, read_body
from k2trt.serve.errors import ApiError, anthropic_error, error_type, openai_error
from k2trt.serve.limits import Admission, Readiness
from k2trt.serve.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("k2trt.serve")

CHAT_PATHS = ("/v1/chat/completions", "/v1/messages")
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})  # probes and scrapers need no key
ROUTE_LABELS = frozenset({*CHAT_PATHS, "/v1/models", *OPEN_PATHS})
STARTUP_CHECK_S = 5.0  # how long start-up waits for the backend's first readiness answer
CLIENT_CLOSED = 499  # nginx's "client closed request": logged and counted, never sent
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies must not buffer the stream
]


@dataclass(frozen=True)
class ServeConfig:
    """Limits and identity of one gateway (the CLI flags of `k2trt serve`)."""

    model_name: str | None = None  # default: the backend's model_id
    api_keys: tuple[str, ...] = ()  # empty: no key needed
    max_concurrency: int = 64
    max_queue: int = 256
    max_tokens_cap: int | None = 16384
    max_body_bytes: int = 8 << 20
    body_timeout_s: float = 30.0  # the whole body, counted from the end of the headers
    retry_after_s: int = 1
    ready_ttl_s: float = 1.0
    close_backend: bool = True  # close the backend when the server shuts down


# ---------------------------------------------------------------------------------------------
# The two chat APIs, as data


@dataclass(frozen=True)
class Turn:
    """Identity of one answer: its id, creation time and the model name it reports."""

    id: str
    created: int
    model: str
    parsed: ParsedChat


class Writer(Protocol):
    """Turns chunks into the bytes of one streamed answer."""

    answer: Answer

    def start(self, prompt_tokens: int) -> bytes: ...

    def feed(self, chunk: ChatChunk) -> bytes: ...

    def fail(self, err: ApiError) -> bytes: ...


@dataclass(frozen=True)
class ChatApi:
    """One chat API: its route, request parser, id prefix, error and answer shapes."""

    route: str
    parse: Callable[[Any], ParsedChat]
    id_prefix: str
    error_body: Callable[[ApiError], dict[str, Any]]
    full: Callable[[Turn, Answer], dict[str, Any]]
    writer: Callable[[Turn], Writer]


OPENAI = ChatApi(
    "/v1/chat/completions",
    openai_api.parse_chat,
    "chatcmpl-",
    openai_error,
    lambda t, a: openai_api.completion(t.id, t.created, t.model, a),
    lambda t: openai_api.ChunkWriter(t.id, t.created, t.model, t.parsed.include_usage),
)
ANTHROPIC = ChatApi(
    "/v1/messages",
    anthropic_api.parse_messages,
    "msg_",
    anthropic_error,
    lambda t, a: anthropic_api.message(t.id, t.model, a),
    lambda t: anthropic_api.EventWriter(t.id, t.model),
)


def error_shape(path: str) -> Callable[[ApiError], dict[str, Any]]:
    """Anthropic-shaped errors on /v1/messages, OpenAI-shaped everywhere else."""
    return anthropic_error if path.startswith(ANTHROPIC.route) else openai_error


# ---------------------------------------------------------------------------------------------
# The gateway


class Gateway:
    """The ASGI app: `uvicorn.run(Gateway(backend, config))` (or `create_app`)."""

    def __init__(self, backend: ChatBackend, config: ServeConfig | None = None) -> None:
        self.backend = backend
        self.config = config or ServeConfig()
        self.model = self.config.model_name or backend.model_id
        self.metrics = Metrics()
        self.admission = Admission(
            self.config.max_concurrency,
            self.config.max_queue,
            self.metrics,
            self.config.retry_after_s,
        )
        self.readiness = Readiness(backend, self.config.ready_ttl_s)
        self._keys = tuple(k.encode() for k in self.config.api_keys)
        self._created = int(time.time())
        self._chat = {OPENAI.route: OPENAI, ANTHROPIC.route: ANTHROPIC}
        self._app = self._starlette()

    def _starlette(self) -> Starlette:
        # Chat POSTs are dispatched in __call__ before routing; the chat routes are listed here
        # too, so that other methods on them get a 405.
        routes = [
            Route(OPENAI.route, ChatEndpoint(self, OPENAI), methods=["POST"]),
            Route(ANTHROPIC.route, ChatEndpoint(self, ANTHROPIC), methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
        ]
        handlers: Any = {404: self._http_error, 405: self._http_error}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self._lifespan)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self._check_backend()
        yield
        if self.config.close_backend:
            await self.backend.close()

    async def _check_backend(self) -> None:
        """At start-up: a warning when the backend does not answer (the gateway still starts;
        /ready says 503 until it does)."""
        try:
            ok = await asyncio.wait_for(self.readiness.ready(fresh=True), STARTUP_CHECK_S)
        except asyncio.TimeoutError:
            ok = False
        if not ok:
            log.warning(
                "the backend of %s does not answer or has no model loaded (%s); "
                "chat requests get 503 until it does",
                self.model,
                getattr(self.backend, "url", type(self.backend).__name__),
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        ex = Exchange(time.perf_counter())
        scope["k2trt.exchange"] = ex

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted before the last byte: a client holding its answer finds it counted.
                self._record(scope, ex)
            await send(message)

        try:
            path = scope["path"]
            if path in OPEN_PATHS or self.authorized(scope["headers"]):
                api = self._chat.get(path)
                if api is not None and scope["method"] == "POST":  # the hot path skips routing
                    await self.chat(api, scope, receive, tracked)
                else:
                    await self._app(scope, receive, tracked)
            else:
                err = ApiError(401, "invalid or missing API key", code="invalid_api_key")
                await send_json(tracked, 401, error_shape(scope["path"])(err))
        finally:
            self._record(scope, ex)

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """A configured key in `Authorization: Bearer KEY` or `x-api-key: KEY`.

        Each presented value is compared with every key in constant time (no early exit)."""
        if not self._keys:
            return True
        presented = []
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented.append(value[7:].strip())
            elif name == b"x-api-key":
                presented.append(value.strip())
        ok = False
        for value in presented:
            for key in self._keys:
                ok |= hmac.compare_digest(value, key)
        return ok

    def _record(self, scope: Scope, ex: Exchange) -> None:
        if ex.recorded:
            return
        ex.recorded = True
        status = CLIENT_CLOSED if ex.disconnected else ex.status or 500
        path = scope["path"]
        route = path if path in ROUTE_LABELS else "other"
        self.metrics.request(route, status)
        if status >= 400:
            kind = "client_disconnect" if status == CLIENT_CLOSED else error_type(status)
            self.metrics.error(route, kind)
        client = scope.get("client") or ("-", 0)
        ms = (time.perf_counter() - ex.start) * 1000
        tokens = (
            f" prompt={ex.prompt_tokens} completion={ex.completion_tokens}"
            if ex.completion_tokens
            else ""
        )
        log.info(
            '%s:%s "%s %s" %d %.1fms%s',
            client[0],
            client[1],
            scope["method"],
            path,
            status,
            ms,
            tokens,
        )

    # -- simple routes ---------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """Liveness: the process serves HTTP."""
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """Readiness: the backend answers and has the model loaded (asked afresh)."""
        if await self.readiness.ready(fresh=True):
            return JSONResponse({"status": "ready", "model": self.model})
        headers = {"retry-after": str(self.config.retry_after_s)}
        return JSONResponse({"status": "not ready", "model": self.model}, 503, headers)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def models(self, request: Request) -> Response:
        """The served model, listed in Anthropic's shape when the client sends anthropic-version."""
        if "anthropic-version" in request.headers:
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._created))
            entry = {
                "type": "model",
                "id": self.model,
                "display_name": self.model,
                "created_at": created,
            }
            return JSONResponse(
                {"data": [entry], "has_more": False, "first_id": self.model, "last_id": self.model}
            )
        model: dict[str, Any] = {
            "id": self.model,
            "object": "model",
            "created": self._created,
            "owned_by": "k2trt",
            "max_model_len": self.backend.max_context,
        }
        return JSONResponse({"object": "list", "data": [model]})

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = f"{request.method} {request.url.path}: " + (
            "no such route" if status == 404 else "method not allowed"
        )
        body = error_shape(request.url.path)(ApiError(status, message))
        return JSONResponse(body, status, getattr(exc, "headers", None))

    # -- chat ------------------------------------------------------------------------------

    async def chat(self, api: ChatApi, scope: Scope, receive: Receive, send: Send) -> None:
        """One chat request, from its body to the last byte of the answer."""
        ex: Exchange = scope["k2trt.exchange"]
        try:
            parsed = api.parse(
                parse_json(
                    await read_body(
                        scope, receive, self.config.max_body_bytes, self.config.body_timeout_s
                    )
                )
            )
            if not await self.readiness.ready():
                raise self._unavailable(f"backend for {self.model} is not ready")
        except ApiError as err:
            await send_json(send, err.status, api.error_body(err), err.headers())
            return
        except ClientGone:
            ex.disconnected = True
            return
        except asyncio.CancelledError:
            await self._drained(api, send, ex)
            return
        turn = Turn(api.id_prefix + secrets.token_hex(12), int(time.time()), self.model, parsed)
        await until_disconnect(receive, self._admitted(api, turn, send, ex), ex)

    async def _admitted(self, api: ChatApi, turn: Turn, send: Send, ex: Exchange) -> None:
        request = self._capped(turn.parsed.request)
        try:
            async with self.admission.slot():
                if turn.parsed.stream:
                    await self._stream(api, turn, request, send, ex)
                else:
                    await self._complete(api, turn, request, send, ex)
        except ApiError as err:  # raised before the response began
            ex.complete = True
            await send_json(send, err.status, api.error_body(err), err.headers())
        except asyncio.CancelledError:
            if ex.disconnected:
                raise
            await self._drained(api, send, ex)

    def _shutting_down(self) -> ApiError:
        return self._unavailable("server shutting down: the drain timeout ran out; retry")

    async def _drained(self, api: ChatApi, send: Send, ex: Exchange) -> None:
        """The server's drain timeout cancelled this request before its answer began: a 503
        with Retry-After, not uvicorn's bare 500 (the cancellation is absorbed: the request
        task ends normally)."""
        if ex.status:
            raise asyncio.CancelledError  # the answer began: _stream ends it with an error event
        uncancel_current()
        err = self._shutting_down()
        ex.complete = True
        await send_json(send, err.status, api.error_body(err), err.headers())

    def _capped(self, request: ChatRequest) -> ChatRequest:
        cap = self.config.max_tokens_cap
        if cap is None or (request.max_tokens is not None and request.max_tokens <= cap):
            return request
        return dataclasses.replace(request, max_tokens=cap)

    def _unavailable(self, message: str) -> ApiError:
        return ApiError(
            503, message, code="backend_unavailable", retry_after=self.config.retry_after_s
        )

    def _backend_error(self, exc: Exception) -> ApiError:
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, RequestRejected):
            return ApiError(400, str(exc), param=exc.field)
        if isinstance(exc, BackendUnavailable):
            self.readiness.down()
            return self._unavailable(f"backend unavailable: {exc}")
        if isinstance(exc, (RecursionError, OverflowError)):  # checked at parse; a last guard
            log.warning("request refused by the backend: %s: %s", type(exc).__name__, exc)
            return ApiError(400, f"request: beyond what the model can take ({exc})")
        log.error("backend failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return ApiError(500, f"backend error: {type(exc).__name__}: {exc}")

    async def _first(self, request: ChatRequest) -> tuple[AsyncIterator[ChatChunk], ChatChunk]:
        """The backend's iterator and its first chunk; any failure so far is an ApiError."""
        try:
            chunks = self.backend.stream(request)
        except Exception as exc:
            raise self._backend_error(exc) from exc
        try:
            return chunks, await anext(chunks)
        except StopAsyncIteration:
            raise ApiError(500, "backend error: the answer ended before its first chunk") from None
        except Exception as exc:
            await close_quietly(chunks)
            raise self._backend_error(exc) from exc

    async def _rest(
        self, chunks: AsyncIterator[ChatChunk], first: ChatChunk, ex: Exchange
    ) -> AsyncIterator[ChatChunk]:
        """All chunks up to the one with finish_reason; times each (TTFT, inter-token)."""
        last = time.perf_counter()
        self.metrics.ttft.observe(last - ex.start)
        yield first
        if first.finish_reason is not None:
            return
        async for chunk in chunks:
            now = time.perf_counter()
            self.metrics.itl.observe(now - last)
            last = now
            yield chunk
            if chunk.finish_reason is not None:
                return
        raise ApiError(500, "backend error: the answer ended without a finish_reason")

    def _account(self, answer: Answer, ex: Exchange) -> None:
        if ex.accounted:
            return
        ex.accounted = True
        ex.prompt_tokens, ex.completion_tokens = answer.prompt_tokens, answer.completion_tokens
        self.metrics.tokens(answer.prompt_tokens, answer.completion_tokens)
        self.metrics.duration.observe(time.perf_counter() - ex.start)

    async def _complete(
        self, api: ChatApi, turn: Turn, request: ChatRequest, send: Send, ex: Exchange
    ) -> None:
        chunks, first = await self._first(request)
        answer = Answer()
        try:
            async for chunk in self._rest(chunks, first, ex):
                answer.add(chunk)
        except Exception as exc:
            raise self._backend_error(exc) from exc
        finally:
            await close_quietly(chunks)
        self._account(answer, ex)
        ex.complete = True
        await send_json(send, 200, api.full(turn, answer))

    async def _stream(
        self, api: ChatApi, turn: Turn, request: ChatRequest, send: Send, ex: Exchange
    ) -> None:
        chunks, first = await self._first(request)
        writer = api.writer(turn)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            data = writer.start(first.prompt_tokens)  # known early if the backend says so
            try:
                async for chunk in self._rest(chunks, first, ex):
                    data += writer.feed(chunk)
                    if data:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                        data = b""
            except OSError:
                raise
            except asyncio.CancelledError:
                if ex.disconnected:
                    raise
                uncancel_current()  # the drain timeout: tell the client why the stream ends early
                err = self._shutting_down()
                ex.status = err.status
                await send(
                    {"type": "http.response.body", "body": writer.fail(err), "more_body": True}
                )
            except Exception as exc:
                err = self._backend_error(exc)
                ex.status = err.status  # logged as failed, though the stream began with 200
                await send(
                    {"type": "http.response.body", "body": writer.fail(err), "more_body": True}
                )
            self._account(writer.answer, ex)
            ex.complete = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-send
            ex.disconnected = not ex.complete
        finally:
            await close_quietly(chunks)
            self._account(writer.answer, ex)


class ChatEndpoint:
    """The ASGI endpoint of one chat API (raw ASGI: it watches for disconnects itself)."""

    def __init__(self, gateway: Gateway, api: ChatApi) -> None:
        self.gateway = gateway
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.chat(self.api, scope, receive, send)


def create_app(backend: ChatBackend, config: ServeConfig | None = None) -> Gateway:
    """The gateway over `backend` (an ASGI app; `app.metrics`, `app.admission` for tests)."""
    return Gateway(backend, config)
