"""SIGTERM drains: a real server process (the `k2trt serve` command, or the same serving code
over a slow scripted backend), a stream in flight when the signal comes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import typer
from typer.testing import CliRunner

from k2trt.cli.serve import command
from k2trt.errors import K2Error
from k2trt.runtime.scripted import SCRIPT_ENV

CLI = (
    "import typer; from k2trt.cli.serve import command; "
    "app = typer.Typer(); app.command()(command); app()"
)
SCRIPTED = """
import sys
from k2trt.serve.app import create_app
from k2trt.serve.scripted import ScriptedBackend
from k2trt.serve.server import bind, make_config, serve_forever, url_of
app = create_app(ScriptedBackend(["word " * 100], delay_s=0.05))  # 125 chunks: ~6 s
config = make_config(app, "127.0.0.1", 0, int(sys.argv[1]))
sock = bind(config)
print(url_of(sock), flush=True)
serve_forever(config, sock)
"""
BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def start(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-u", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = next((w for w in line.split() if w.startswith("http://")), None)
    if url is None:
        proc.kill()
        raise AssertionError(f"no URL printed: {line!r} {proc.communicate()[1][-2000:]}")
    return proc, url


def stream_in_thread(url: str) -> tuple[threading.Thread, threading.Event, list[str]]:
    """A streaming request read to its end in a thread; the event fires at its first bytes."""
    began = threading.Event()
    lines: list[str] = []

    def run() -> None:
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=BODY, timeout=30) as r:
                for line in r.iter_lines():
                    began.set()
                    if line:
                        lines.append(line)
        except httpx.HTTPError as exc:  # the server cut the stream
            lines.append(f"cut: {type(exc).__name__}")
        began.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert began.wait(30)
    return thread, began, lines


def refused_within(url: str, seconds: float) -> bool:
    where = urlparse(url)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection((where.hostname, where.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def finish_reason(lines: list[str]) -> Any:
    data = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    return next(
        (
            d["choices"][0]["finish_reason"]
            for d in data
            if d.get("choices") and d["choices"][0]["finish_reason"]
        ),
        None,
    )


@pytest.fixture
def stop_on_exit() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_cli_sigterm_drains_the_stream_in_flight(
    tiny_ckpt: Path, tmp_path: Path, stop_on_exit: list[subprocess.Popen[str]]
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"replies": ["Hello world. " * 25], "delay_s": 0.03}))
    args = ["-c", CLI, "--local", str(tiny_ckpt), "--port", "0", "--drain-timeout", "20"]
    proc, url = start(args, {SCRIPT_ENV: str(script)})
    stop_on_exit.append(proc)
    thread, _, lines = stream_in_thread(url)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert refused_within(url, 2.0), "still accepting connections after SIGTERM"
    thread.join(30)
    assert lines[-1] == "data: [DONE]"
    assert finish_reason(lines) == "stop"
    assert proc.wait(20) == 0
    assert time.monotonic() - signalled < 20
    assert "Shutting down" in proc.communicate()[1]


def test_drain_timeout_ends_a_stream_that_runs_too_long_with_an_error(
    stop_on_exit: list[subprocess.Popen[str]],
) -> None:
    proc, url = start(["-c", SCRIPTED, "1"])
    stop_on_exit.append(proc)
    thread, _, lines = stream_in_thread(url)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - signalled < 3  # 1 s drain timeout, not the ~6 s stream
    thread.join(10)
    # Ended, not cut: an error event saying why, then the end of the stream.
    error = json.loads(lines[-2][6:])["error"]
    assert error["type"] == "service_unavailable"
    assert error["message"] == "server shutting down: the drain timeout ran out; retry"
    assert lines[-1] == "data: [DONE]"
    assert finish_reason(lines) is None
    assert "Traceback" not in proc.communicate()[1]


def test_cli_needs_exactly_one_backend(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(command)
    runner = CliRunner()
    for args in ([], ["--local", str(tmp_path), "--triton-url", "h:1"]):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, K2Error)
        assert (
            str(result.exception)
            == "give exactly one backend: --triton-url HOST:PORT or --local CKPT"
        )
    bad = runner.invoke(app, ["--triton-url", "localhost"])
    assert isinstance(bad.exception, K2Error)
    assert str(bad.exception).startswith("--triton-url: expected HOST:PORT")
