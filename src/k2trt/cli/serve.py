"""`k2trt serve`: the OpenAI- and Anthropic-compatible HTTP API over Triton or the CPU reference."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from k2trt.errors import K2Error
from k2trt.output import OUTPUT
from k2trt.runtime.types import ChatBackend
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.server import bind, make_config, serve_forever, url_of

API_KEYS_ENV = "K2TRT_API_KEYS"  # comma-separated, added to --api-key
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
    )
    backend = make_backend(triton_url, local, model_name)
    gateway = create_app(backend, config)
    logging.basicConfig(
        level=logging.WARNING if OUTPUT.mode == "quiet" else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    uv = make_config(gateway, host, port, drain_timeout)
    try:
        sock = bind(uv)
    except OSError as exc:
        raise K2Error(f"cannot listen on {host}:{port} ({exc})") from None
    url = url_of(sock)
    OUTPUT.result(
        {"url": url, "model": gateway.model, "auth": bool(keys)},
        lambda d: (
            f"serving {d['model']} at {url} (OpenAI {url}/v1, Anthropic {url}/v1/messages)"
            + ("; API key required" if keys else "")
        ),
    )
    serve_forever(uv, sock)


def api_keys_from_env() -> tuple[str, ...]:
    """Keys from $K2TRT_API_KEYS (comma-separated; blanks ignored)."""
    return tuple(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())


def make_backend(triton_url: str | None, local: Path | None, model_name: str | None) -> ChatBackend:
    """Exactly one backend: Triton over gRPC, or the in-process CPU reference."""
    if (triton_url is None) == (local is None):
        raise K2Error("give exactly one backend: --triton-url HOST:PORT or --local CKPT")
    if local is not None:
        from k2trt.runtime.local import LocalBackend

        return LocalBackend.load(local, model_name)
    assert triton_url is not None
    host, _, port = triton_url.rpartition(":")
    if not host or not port.isdigit():
        raise K2Error(
            f"--triton-url: expected HOST:PORT (Triton's gRPC port, usually 8001), "
            f"got {triton_url!r}"
        )
    from k2trt.serve.triton_backend import TritonBackend

    return TritonBackend(triton_url, model_id=model_name or "kimi-k2")
