"""The gateway against client mistakes and abuse: bodies too deep or out of the engine's range
are 400s naming the field, the drain timeout answers 503, slow clients are cut off without
starving /health, start-up binds first and warns; Anthropic's message_start has the real
input_tokens. Real servers on 127.0.0.1 (a thread, or a process where signals matter)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import typer
from typer.testing import CliRunner

from k2trt.cli.serve import command
from k2trt.errors import K2Error
from k2trt.runtime.types import ChatChunk, ChatRequest
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.body import MAX_DEPTH
from k2trt.serve.scripted import ScriptedBackend
from k2trt.serve.server import ServerThread

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


@contextlib.contextmanager
def gateway(backend: Any = None, **limits: Any) -> Iterator[tuple[httpx.Client, ServerThread]]:
    config = {k: v for k, v in limits.items() if k in ServeConfig.__dataclass_fields__}
    server_limits = {k: v for k, v in limits.items() if k not in config}
    app = create_app(backend or ScriptedBackend(), ServeConfig(**config))
    with (
        ServerThread(app, **server_limits) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        yield client, server


def nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


# ---------------------------------------------------------------------------------------------
# Client mistakes are 400s naming the field


def test_bodies_too_deep_or_out_of_range_are_400_naming_the_field() -> None:
    # A tool schema 480 levels deep, written out (json.dumps itself would recurse too deep).
    deep = '{"type":"object","properties":{"a":' * 480 + '{"type":"string"}' + "}}" * 480
    deep_tool = '{"type":"function","function":{"name":"f","parameters":' + deep + "}}"
    cases: list[tuple[bytes, str]] = [
        (b"[" * 100_000 + b"]" * 100_000, "body"),
        (f'{{"messages":{json.dumps(HELLO)},"tools":[{deep_tool}]}}'.encode(), "tools[0]"),
        (json.dumps({"messages": HELLO, "seed": 2**64}).encode(), "seed"),
        (json.dumps({"messages": HELLO, "seed": -1}).encode(), "seed"),
        (json.dumps({"messages": HELLO, "temperature": 10**400}).encode(), "temperature"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
    ]
    with gateway() as (client, _):
        for body, field in cases:
            r = client.post(CHAT, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (field, r.text)
            error = r.json()["error"]
            assert error["param"].startswith(field), (field, error)
            assert error["message"].startswith(field)
            assert "\n" not in error["message"]
        # A paired surrogate escape is a real character, and a schema of 40 levels is fine.
        fine = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
        assert client.post(CHAT, content=fine).status_code == 200
        tool = {"type": "function", "function": {"name": "f", "parameters": nested_schema(40)}}
        assert client.post(CHAT, json={"messages": HELLO, "tools": [tool]}).status_code == 200


def test_the_depth_limit_keeps_template_rendering_within_the_recursion_limit(
    tmp_path: Any,
) -> None:
    """The deepest schema the limit lets through renders with the built-in template (which
    a checkpoint without a template gets), in a thread as backends render."""
    from k2trt.chat.template import load_chat_template, render_chat

    template = load_chat_template(tmp_path).text
    levels = (MAX_DEPTH - 5) // 2  # body > tools > [0] > function > parameters, 2 per level
    tools = [{"type": "function", "function": {"name": "f", "parameters": nested_schema(levels)}}]
    out: list[str] = []
    worker = threading.Thread(target=lambda: out.append(render_chat(template, HELLO, tools).text))
    worker.start()
    worker.join(30)
    assert out and '"a"' in out[0]


class Exploding(ScriptedBackend):
    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        raise RecursionError("maximum recursion depth exceeded")


def test_a_recursion_error_in_the_backend_is_a_400_not_a_500() -> None:
    with gateway(Exploding()) as (client, _):
        r = client.post(CHAT, json={"messages": HELLO})
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith("request: beyond what the model can take")


# ---------------------------------------------------------------------------------------------
# Slow clients


def test_slow_clients_are_cut_off_and_health_still_answers() -> None:
    with gateway(header_timeout_s=0.5, max_connections=32, body_timeout_s=0.5) as (client, srv):
        where = urlparse(srv.url)
        slow = []
        for _ in range(100):  # 3x the connection limit, each dribbling half a request line
            sock = socket.create_connection((where.hostname, where.port), timeout=5)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        assert client.get("/health").status_code == 200
        # Every slow connection is closed by the server: evicted or timed out (a reset when
        # it went before its bytes were read).
        for sock in slow:
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""
            sock.close()
        # A body that stops arriving: 408 naming the body.
        sock = socket.create_connection((where.hostname, where.port), timeout=5)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = b""
        while not answer.endswith(b"}}"):
            piece = sock.recv(4096)
            assert piece, answer
            answer += piece
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"body: not received within 0.5 s (--body-timeout)" in answer


# ---------------------------------------------------------------------------------------------
# Drain timeout

QUEUED = """
import sys
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.scripted import ScriptedBackend
from k2trt.serve.server import bind, make_config, serve_forever, url_of
backend = ScriptedBackend(["word " * 100], delay_s=0.05)  # 125 chunks: ~6 s
app = create_app(backend, ServeConfig(max_concurrency=1))
config = make_config(app, "127.0.0.1", 0, 1)
sock = bind(config)
print(url_of(sock), flush=True)
serve_forever(config, sock)
"""


def test_requests_waiting_at_the_drain_timeout_get_503_with_retry_after() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", QUEUED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        answers: list[httpx.Response] = []

        def ask(stream: bool) -> None:
            body = {"messages": HELLO, "stream": stream}
            answers.append(httpx.post(url + CHAT, json=body, timeout=30))

        running = threading.Thread(target=ask, args=(True,))
        running.start()
        time.sleep(0.5)  # the first holds the only slot
        queued = threading.Thread(target=ask, args=(False,))
        queued.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        queued.join(10)
        running.join(10)
        assert proc.wait(10) == 0
        waited = next(r for r in answers if r.headers["content-type"] == "application/json")
        assert waited.status_code == 503
        assert waited.headers["retry-after"] == "1"
        assert waited.json()["error"]["message"] == (
            "server shutting down: the drain timeout ran out; retry"
        )
        assert "Traceback" not in proc.communicate()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# Start-up


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app


def test_a_busy_port_fails_before_the_model_loads(tmp_path: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        missing = tmp_path / "no-such-checkpoint"
        result = CliRunner().invoke(cli(), ["--local", str(missing), "--port", str(port)])
    assert isinstance(result.exception, K2Error)
    assert str(result.exception).startswith(f"cannot listen on 127.0.0.1:{port} (")


def test_an_open_address_without_a_key_is_warned_about(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-checkpoint"
    with caplog.at_level(logging.WARNING, "k2trt.serve"):
        result = CliRunner().invoke(
            cli(), ["--local", str(missing), "--host", "0.0.0.0", "--port", "0"]
        )
    assert result.exception is not None  # the checkpoint is missing: after the warning
    assert (
        "listening on 0.0.0.0 without an API key: anyone who can reach it can use the model "
        "(give --api-key or $K2TRT_API_KEYS)"
    ) in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, "k2trt.serve"):
        CliRunner().invoke(cli(), ["--local", str(missing), "--port", "0"])
    assert not [m for m in caplog.messages if "without an API key" in m]


def test_a_backend_that_does_not_answer_at_start_up_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = ScriptedBackend()
    backend.is_ready = False
    with caplog.at_level(logging.WARNING, "k2trt.serve"), gateway(backend) as (client, _):
        assert client.get("/ready").status_code == 503
    assert (
        "the backend of k2trt-scripted does not answer or has no model loaded "
        "(ScriptedBackend); chat requests get 503 until it does"
    ) in caplog.messages


# ---------------------------------------------------------------------------------------------
# Anthropic streaming usage


def test_anthropic_message_start_has_the_real_input_tokens() -> None:
    body = {"model": "m", "max_tokens": 50, "messages": HELLO, "stream": True}
    with gateway() as (client, _):
        text = client.post("/v1/messages", json=body).text
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    start = data[0]["message"]["usage"]["input_tokens"]
    end = data[-2]["usage"]["input_tokens"]
    assert data[0]["type"] == "message_start" and data[-2]["type"] == "message_delta"
    assert start == end > 0
