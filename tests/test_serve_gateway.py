"""The gateway over HTTP (a real uvicorn server on a free port, the zero-cost scripted backend):
routes, limits, errors, cancellation and metrics."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from k2trt.cli.serve import api_keys_from_env
from k2trt.runtime.types import BackendUnavailable, ChatChunk, ChatRequest
from k2trt.serve.app import Gateway, ServeConfig, create_app
from k2trt.serve.scripted import ScriptedBackend
from k2trt.serve.server import ServerThread

HELLO = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
LONG_REPLY = "word " * 200  # 250 chunks of 4 characters


Serve = Callable[..., tuple[httpx.Client, Gateway]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """serve(backend, **ServeConfig fields) -> (client bound to the server, gateway)."""
    with contextlib.ExitStack() as stack:

        def start(backend: Any = None, **config: Any) -> tuple[httpx.Client, Gateway]:
            app = create_app(backend or ScriptedBackend(), ServeConfig(**config))
            server = stack.enter_context(ServerThread(app))
            client = stack.enter_context(httpx.Client(base_url=server.url, timeout=10))
            return client, app

        yield start


def events(text: str) -> list[Any]:
    out = []
    for event in text.split("\n\n")[:-1]:
        data = event.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def metric(gateway: Gateway, name: str, labels: dict[str, str] | None = None) -> float:
    value = gateway.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


# ---------------------------------------------------------------------------------------------
# Routes


def test_health_ready_models(serve: Serve) -> None:
    backend = ScriptedBackend(model_id="tiny", max_context=4096)
    client, _ = serve(backend, model_name="kimi-k2")
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "model": "kimi-k2"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [
        ("kimi-k2", "model", 4096)
    ]
    anthropic = client.get("/v1/models", headers={"anthropic-version": "2023-06-01"}).json()
    assert [(m["type"], m["id"]) for m in anthropic["data"]] == [("model", "kimi-k2")]
    backend.is_ready = False
    not_ready = client.get("/ready")
    assert (not_ready.status_code, not_ready.headers["retry-after"]) == (503, "1")


def test_chat_completion_and_stream(serve: Serve) -> None:
    client, _ = serve(ScriptedBackend(["Hello there!"]), model_name="kimi-k2")
    body = client.post(CHAT, json={"model": "x", "messages": HELLO}).json()
    assert body["id"].startswith("chatcmpl-") and body["model"] == "kimi-k2"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there!"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 4  # 3 pieces + end of turn
    reply = client.post(CHAT, json={"messages": HELLO, "stream": True})
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
    streamed = events(reply.text)
    assert streamed[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in streamed[:-1])
    assert text == "Hello there!"
    assert len({e["id"] for e in streamed[:-1]}) == 1


def test_parameters_reach_the_backend(serve: Serve) -> None:
    backend = ScriptedBackend()
    client, _ = serve(backend, max_tokens_cap=100)
    sent = [
        {"messages": HELLO},
        {"messages": HELLO, "max_tokens": 1000, "seed": 3, "stop": ["x", "y"], "top_p": 0.5},
        {"messages": HELLO, "max_completion_tokens": 50, "temperature": 0},
    ]
    for body in sent:
        assert client.post(CHAT, json=body).status_code == 200
    got = [(r.max_tokens, r.temperature, r.top_p, r.seed, r.stop) for r in backend.requests]
    assert got == [
        (100, 0.6, 1.0, None, ()),
        (100, 0.6, 0.5, 3, ("x", "y")),
        (50, 0.0, 1.0, None, ()),
    ]


def test_a_stop_sequence_is_reported_by_name(serve: Serve) -> None:
    client, _ = serve(ScriptedBackend(["Sunny today. Then rain, then sun."]))
    body = {"max_tokens": 50, "messages": HELLO, "stop_sequences": ["then", "Then"]}
    whole = client.post("/v1/messages", json=body).json()
    assert whole["content"] == [{"type": "text", "text": "Sunny today. "}]
    assert (whole["stop_reason"], whole["stop_sequence"]) == ("stop_sequence", "Then")
    streamed = client.post("/v1/messages", json={**body, "stream": True}).text
    [delta] = [e for e in streamed.split("\n\n") if e.startswith("event: message_delta")]
    payload = json.loads(delta.split("data: ", 1)[1])["delta"]
    assert payload == {"stop_reason": "stop_sequence", "stop_sequence": "Then"}
    plain = client.post("/v1/messages", json={**body, "stop_sequences": ["never"]}).json()
    assert (plain["stop_reason"], plain["stop_sequence"]) == ("end_turn", None)
    openai = client.post(CHAT, json={"messages": HELLO, "stop": ["Then"]}).json()
    assert openai["choices"][0]["finish_reason"] == "stop"
    assert openai["choices"][0]["message"]["content"] == "Sunny today. "


def test_unknown_route_and_method(serve: Serve) -> None:
    client, _ = serve()
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    wrong = client.get("/v1/messages")
    assert wrong.status_code == 405
    assert wrong.json()["type"] == "error"


# ---------------------------------------------------------------------------------------------
# Robustness


def test_api_keys(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = serve(api_keys=("key-one", "key-two"))
    missing = client.post(CHAT, json={"messages": HELLO})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    wrong = client.post(
        CHAT, json={"messages": HELLO}, headers={"authorization": "Bearer key-three"}
    )
    assert wrong.status_code == 401
    bearer = client.post(
        CHAT, json={"messages": HELLO}, headers={"authorization": "Bearer key-two"}
    )
    assert bearer.status_code == 200
    anthropic = {"max_tokens": 5, "messages": HELLO}
    denied = client.post("/v1/messages", json=anthropic)
    assert (denied.status_code, denied.json()["error"]["type"]) == (401, "authentication_error")
    assert denied.json()["type"] == "error"
    assert (
        client.post("/v1/messages", json=anthropic, headers={"x-api-key": "key-one"}).status_code
        == 200
    )
    assert client.get("/v1/models").status_code == 401
    assert client.get("/health").status_code == 200  # probes need no key
    monkeypatch.setenv("K2TRT_API_KEYS", " a, ,b ")
    assert api_keys_from_env() == ("a", "b")


def test_body_size_limit(serve: Serve) -> None:
    client, _ = serve(max_body_bytes=300)
    big = {"messages": [{"role": "user", "content": "x" * 400}]}
    declared = client.post(CHAT, json=big)
    assert declared.status_code == 413
    assert declared.json()["error"]["message"] == "body: larger than 300 bytes (--max-body-bytes)"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while reading
        data = json.dumps(big).encode()
        yield from (data[i : i + 100] for i in range(0, len(data), 100))

    streamed = client.post(CHAT, content=chunked(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    anthropic = client.post("/v1/messages", json={"max_tokens": 1, **big})
    assert anthropic.json()["error"]["type"] == "request_too_large"
    assert client.post(CHAT, json={"messages": HELLO}).status_code == 200


def test_malformed_requests_name_the_field(serve: Serve) -> None:
    client, _ = serve()
    not_json = client.post(CHAT, content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert not_json.json()["error"]["param"] == "body"
    bad_role = client.post(CHAT, json={"messages": [{"role": "robot", "content": "x"}]})
    assert bad_role.status_code == 400
    error = bad_role.json()["error"]
    assert error["param"] == "messages[0].role"
    assert error["message"].startswith("messages[0].role: expected one of")
    assert set(error) == {"message", "type", "param", "code"}
    anthropic = client.post("/v1/messages", json={"messages": HELLO})
    assert anthropic.status_code == 400
    assert anthropic.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: required (an integer)"},
    }


def test_prompt_over_the_context_is_rejected(serve: Serve) -> None:
    client, _ = serve(ScriptedBackend(max_context=50))
    long = [{"role": "user", "content": "word " * 100}]
    reply = client.post(CHAT, json={"messages": long, "stream": True})
    assert reply.status_code == 400  # before the stream began: a real status, not an event
    error = reply.json()["error"]
    assert error["param"] == "messages"
    assert "context of 50 tokens" in error["message"]


def test_backend_not_ready_or_down_is_503(serve: Serve) -> None:
    backend = ScriptedBackend()
    client, gateway = serve(backend, ready_ttl_s=0.0)
    backend.is_ready = False
    reply = client.post(CHAT, json={"messages": HELLO})
    assert (reply.status_code, reply.headers["retry-after"]) == (503, "1")
    assert reply.json()["error"]["code"] == "backend_unavailable"
    anthropic = client.post("/v1/messages", json={"max_tokens": 5, "messages": HELLO})
    assert anthropic.json()["error"]["type"] == "overloaded_error"
    backend.is_ready = True
    backend.fail = BackendUnavailable("triton: connection refused")
    down = client.post(CHAT, json={"messages": HELLO})
    assert down.status_code == 503
    assert down.json()["error"] == {
        "message": "backend unavailable: triton: connection refused",
        "type": "service_unavailable",
        "param": None,
        "code": "backend_unavailable",
    }
    assert (
        metric(gateway, "k2trt_errors_total", {"route": CHAT, "type": "service_unavailable"}) == 2
    )


class FailingBackend(ScriptedBackend):
    """Fails after its first chunk."""

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        async def chunks() -> AsyncIterator[ChatChunk]:
            yield ChatChunk(content="partial")
            raise RuntimeError("engine crashed")

        return chunks()


def test_backend_failure_mid_stream_is_an_error_event(serve: Serve) -> None:
    client, gateway = serve(FailingBackend())
    streamed = events(client.post(CHAT, json={"messages": HELLO, "stream": True}).text)
    assert streamed[1]["choices"][0]["delta"] == {"content": "partial"}
    assert streamed[-2]["error"]["message"] == "backend error: RuntimeError: engine crashed"
    assert streamed[-1] == "[DONE]"
    whole = client.post(CHAT, json={"messages": HELLO})
    assert whole.status_code == 500
    assert metric(gateway, "k2trt_requests_total", {"route": CHAT, "status": "500"}) == 2


def test_queue_full_is_429_with_retry_after(serve: Serve) -> None:
    backend = ScriptedBackend(["abcd" * 4], delay_s=0.1)  # 5 chunks: ~0.5 s a request
    client, gateway = serve(backend, max_concurrency=1, max_queue=1)
    results: list[int] = []

    def one() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=10) as c:
            results.append(c.post(CHAT, json={"messages": HELLO, "stream": True}).status_code)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while gateway.admission.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (metric(gateway, "k2trt_in_flight"), metric(gateway, "k2trt_queue_depth")) == (1, 1)
    refused = client.post(CHAT, json={"messages": HELLO})
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
    assert refused.json()["error"]["type"] == "rate_limit_error"
    for t in threads:
        t.join()
    assert results == [200, 200]
    # The slot is given back just after the last byte, which the client may read first.
    deadline = time.monotonic() + 2
    while gateway.admission.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (gateway.admission.running, gateway.admission.waiting) == (0, 0)


def raw_request(url: str, body: dict[str, Any], path: str = CHAT) -> socket.socket:
    """A POST on a plain socket, so the test decides exactly when the connection drops."""
    where = urlparse(url)
    sock = socket.create_connection((where.hostname, where.port))
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    sock.sendall(head.encode() + f"content-length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_generation(serve: Serve, stream: bool) -> None:
    backend = ScriptedBackend([LONG_REPLY], delay_s=0.05)  # 250 chunks: 12 s if not cancelled
    client, gateway = serve(backend)
    sock = raw_request(str(client.base_url), {"messages": HELLO, "stream": stream})
    if stream:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the stream has begun
    else:
        time.sleep(0.3)
    closed = time.monotonic()
    sock.close()
    deadline = closed + 1.0
    while not backend.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.cancelled, "generation still running a second after the client left"
    assert backend.cancelled[0] - closed < 1.0
    while gateway.admission.running and time.monotonic() < deadline + 1:
        time.sleep(0.01)
    assert gateway.admission.running == 0
    assert metric(gateway, "k2trt_requests_total", {"route": CHAT, "status": "499"}) == 1


def test_accepted_connections_have_nagle_off() -> None:
    # uvicorn's own bind_socket() makes proto-0 sockets, on which asyncio leaves Nagle on: the
    # last small write of every streamed answer then waits ~40 ms for a delayed ACK.
    server = ServerThread(create_app(ScriptedBackend()))
    with server, httpx.Client(base_url=server.url) as client:
        assert client.get("/health").status_code == 200  # the connection stays open
        [connection] = server.server.server_state.connections
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


# ---------------------------------------------------------------------------------------------
# Observability


def test_metrics_and_request_log(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="k2trt.serve")
    client, gateway = serve(ScriptedBackend(["Hello there!"]))
    _, other = serve()
    client.post(CHAT, json={"messages": HELLO})
    client.post(CHAT, json={"messages": HELLO, "stream": True})
    client.post(CHAT, json={"messages": "no"})
    text = client.get("/metrics").text
    assert f'k2trt_requests_total{{route="{CHAT}",status="200"}} 2.0' in text
    assert f'k2trt_requests_total{{route="{CHAT}",status="400"}} 1.0' in text
    assert f'k2trt_errors_total{{route="{CHAT}",type="invalid_request_error"}} 1.0' in text
    for name in ("k2trt_queue_depth", "k2trt_in_flight"):
        assert f"\n{name} 0.0\n" in text
    assert metric(gateway, "k2trt_completion_tokens_total") == 8
    assert metric(gateway, "k2trt_prompt_tokens_total") > 0
    assert metric(gateway, "k2trt_time_to_first_token_seconds_count") == 2
    assert metric(gateway, "k2trt_inter_token_latency_seconds_count") == 6  # 4 chunks each
    assert metric(gateway, "k2trt_request_duration_seconds_count") == 2
    assert metric(other, "k2trt_requests_total", {"route": CHAT, "status": "200"}) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "k2trt.serve"]
    assert any(f'"POST {CHAT}" 200 ' in line and "completion=4" in line for line in lines)
    assert any(f'"POST {CHAT}" 400 ' in line for line in lines)
    assert any('"GET /metrics" 200 ' in line for line in lines)
