"""Running the gateway under uvicorn: a foreground server that drains on SIGTERM/SIGINT and
exits cleanly, and a background-thread server for tests, the demo and benchmarks."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from k2trt.serve.connections import GuardedProtocol, fd_capped

DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, minus one step: after a signal-initiated shutdown it does not
    re-raise the signal, so a drained server exits with status 0.

    On SIGTERM (or Ctrl+C) uvicorn stops listening (new connections are refused), lets
    in-flight responses finish for up to `timeout_graceful_shutdown` seconds, cancels what
    is left, then runs the app's shutdown (which closes the backend)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def make_config(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    drain_timeout_s: int = 30,
    header_timeout_s: float = 10.0,
    max_connections: int = 1024,
    workers: int = 1,
) -> uvicorn.Config:
    """uvicorn settings for the gateway (its own request log replaces uvicorn's access log).

    `app` is the ASGI app, or with `workers` > 1 the import string of a factory that builds
    it in each worker process. Connections are guarded (see connections.py)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        timeout_graceful_shutdown=drain_timeout_s,
        access_log=False,
        log_config=None,
        lifespan="on",
        server_header=False,
        http=GuardedProtocol,
        workers=workers,
        factory=isinstance(app, str),
    )
    config.header_timeout_s = header_timeout_s  # type: ignore[attr-defined]
    config.max_connections = fd_capped(max_connections)  # type: ignore[attr-defined]
    return config


def bind(config: uvicorn.Config) -> socket.socket:
    """The listening socket for `config.host`/`config.port` (port 0: a free one), so the URL
    is known before serving; connections made before the server starts wait in the backlog.

    Made with proto IPPROTO_TCP, unlike uvicorn's `bind_socket()` (proto 0): asyncio turns
    Nagle off (TCP_NODELAY) only on connections whose socket says IPPROTO_TCP, and with Nagle
    on, the small last write of every streamed answer waits for the client's delayed ACK
    (~40 ms per request)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        config.host, config.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(config.backlog)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def serve_forever(config: uvicorn.Config, sock: socket.socket) -> None:
    """Serve on `sock` until SIGTERM/SIGINT, then drain (see DrainingServer)."""
    DrainingServer(config).run(sockets=[sock])


class ServerThread:
    """The gateway on a free local port in a background thread.

    >>> with ServerThread(app) as server:  # doctest: +SKIP
    ...     httpx.get(server.url + "/health")
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        drain_timeout_s: int = 5,
        header_timeout_s: float = 10.0,
        max_connections: int = 1024,
    ) -> None:
        self.config = make_config(app, host, 0, drain_timeout_s, header_timeout_s, max_connections)
        self.server = DrainingServer(self.config)
        self._sock = bind(self.config)
        self.url = url_of(self._sock)
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name="k2trt-serve",
        )

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=(self.config.timeout_graceful_shutdown or 5) + 5)
        self._sock.close()
