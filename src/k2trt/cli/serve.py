"""`k2trt serve`: the OpenAI- and Anthropic-compatible HTTP API over Triton or the CPU reference."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

import typer

from k2trt.chat.grammar import check_mode
from k2trt.errors import K2Error
from k2trt.output import OUTPUT
from k2trt.runtime.types import ChatBackend
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.server import bind, make_config, serve_forever, url_of
from k2trt.serve.workers import FACTORY, LOG_FORMAT, serve_workers, worker_settings

API_KEYS_ENV = "K2TRT_API_KEYS"  # comma-separated, added to --api-key
TRITON_MODEL_ID = "kimi-k2"
log = logging.getLogger("k2trt.serve")
DEFAULTS = ServeConfig()


def command(
    triton_url: str = typer.Option(
        None,
        "--triton-url",
        help="Triton's gRPC endpoint HOST:PORT serving the packaged chat model.",
    ),
    local: Path = typer.Option(
        None,
        "--local",
        help="Run this checkpoint in-process on CPU (tiny or sliced models; $K2TRT_SCRIPT "
        "scripts its replies).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free one)."),
    api_key: list[str] = typer.Option(
        None,
        "--api-key",
        help=f"Accepted API key (repeatable; also ${API_KEYS_ENV}, comma-separated). "
        "None given: no key needed.",
    ),
    model_name: str = typer.Option(
        None, "--model-name", help="Model name clients see (default: the backend's model id)."
    ),
    max_concurrency: int = typer.Option(
        DEFAULTS.max_concurrency, "--max-concurrency", min=1, help="Requests generating at once."
    ),
    max_queue: int = typer.Option(
        DEFAULTS.max_queue, "--max-queue", min=0, help="Requests waiting for a slot; more get 429."
    ),
    max_tokens_cap: int = typer.Option(
        DEFAULTS.max_tokens_cap, "--max-tokens-cap", min=1, help="Upper bound on max_tokens."
    ),
    max_body_bytes: int = typer.Option(
        DEFAULTS.max_body_bytes,
        "--max-body-bytes",
        min=1,
        help="Largest request body; more get 413.",
    ),
    drain_timeout: int = typer.Option(
        30, "--drain-timeout", min=1, help="Seconds in-flight requests get after SIGTERM."
    ),
    header_timeout: float = typer.Option(
        10.0,
        "--header-timeout",
        min=0.1,
        help="Seconds a connection gets to send complete request headers; then it is closed.",
    ),
    body_timeout: float = typer.Option(
        DEFAULTS.body_timeout_s,
        "--body-timeout",
        min=0.1,
        help="Seconds a request body gets to arrive after its headers; then 408.",
    ),
    max_connections: int = typer.Option(
        1024,
        "--max-connections",
        min=1,
        help="Open connections; past it a new one evicts the oldest idle one "
        "(lowered to fit the open-file limit).",
    ),
    tool_grammar: str = typer.Option(
        "auto",
        "--tool-grammar",
        envvar="K2TRT_TOOL_GRAMMAR",
        help="Constrained tool calls with --local: off | auto (when tools are declared and "
        "not every tool says strict: false) | strict (every tool strict: unsupported schema "
        "keywords are a 400).",
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Gateway processes sharing the port (each builds its own backend: meant for "
        "--triton-url); a worker that dies is replaced.",
    ),
) -> None:
    """Serve /v1/chat/completions (OpenAI), /v1/messages (Anthropic), /v1/models, /health,
    /ready and /metrics until SIGTERM or Ctrl+C, then drain in-flight requests."""
    keys = tuple(api_key or ()) + api_keys_from_env()
    config = ServeConfig(
        model_name=model_name,
        api_keys=keys,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        max_tokens_cap=max_tokens_cap,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout,
    )
    check_backend(triton_url, local)
    # The local backend reads it (workers inherit it): k2trt.runtime.constrain.mode_from_env.
    os.environ["K2TRT_TOOL_GRAMMAR"] = check_mode(tool_grammar)
    level = logging.WARNING if OUTPUT.mode == "quiet" else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    # Bound before the backend loads: a busy port fails at once; early connections wait.
    app: object = FACTORY if workers > 1 else None
    uv = make_config(
        app, host, port, drain_timeout, header_timeout, max_connections, workers=workers
    )
    try:
        sock = bind(uv)
    except OSError as exc:
        raise K2Error(f"cannot listen on {host}:{port} ({exc})") from None
    warn_if_open(host, keys)
    url = url_of(sock)
    if workers > 1:
        settings = worker_settings(triton_url, local, model_name, config, level)
        announce(url, model_name or (local.name if local else TRITON_MODEL_ID), keys, workers)
        serve_workers(uv, sock, settings)
        return
    if local is not None:
        OUTPUT.note(f"listening on {url}; loading {local} (requests wait until it is loaded)")
    gateway = create_app(make_backend(triton_url, local, model_name), config)
    uv.app = gateway
    announce(url, gateway.model, keys, workers)
    serve_forever(uv, sock)


def announce(url: str, model: str, keys: tuple[str, ...], workers: int) -> None:
    """The result line: where the gateway serves (the first line on stdout)."""
    OUTPUT.result(
        {"url": url, "model": model, "auth": bool(keys), "workers": workers},
        lambda d: (
            f"serving {d['model']} at {url} (OpenAI {url}/v1, Anthropic {url}/v1/messages)"
            + ("; API key required" if keys else "")
            + (f"; {workers} workers" if workers > 1 else "")
        ),
    )


def warn_if_open(host: str, keys: tuple[str, ...]) -> None:
    """A warning when the gateway listens beyond this machine and asks no key."""
    if keys:
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning(
            "listening on %s without an API key: anyone who can reach it can use the model "
            "(give --api-key or $%s)",
            host,
            API_KEYS_ENV,
        )


def api_keys_from_env() -> tuple[str, ...]:
    """Keys from $K2TRT_API_KEYS (comma-separated; blanks ignored)."""
    return tuple(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())


def check_backend(triton_url: str | None, local: Path | None) -> None:
    """Exactly one backend, well spelled (checked before anything is bound or loaded)."""
    if (triton_url is None) == (local is None):
        raise K2Error("give exactly one backend: --triton-url HOST:PORT or --local CKPT")
    if triton_url is not None:
        host, _, port = triton_url.rpartition(":")
        if not host or not port.isdigit():
            raise K2Error(
                f"--triton-url: expected HOST:PORT (Triton's gRPC port, usually 8001), "
                f"got {triton_url!r}"
            )


def make_backend(triton_url: str | None, local: Path | None, model_name: str | None) -> ChatBackend:
    """Exactly one backend: Triton over gRPC, or the in-process CPU reference."""
    check_backend(triton_url, local)
    if local is not None:
        from k2trt.runtime.local import LocalBackend

        return LocalBackend.load(local, model_name)
    assert triton_url is not None
    from k2trt.serve.triton_backend import TritonBackend

    return TritonBackend(triton_url, model_id=model_name or TRITON_MODEL_ID)
