"""`k2trt serve --workers N`: N gateway processes sharing one listening socket.

The parent binds the port (a busy port fails before anything loads), then uvicorn's
supervisor spawns the workers, each building its own backend and app from the settings the
parent leaves in $K2TRT_SERVE_WORKER (`worker_app` is the factory uvicorn imports by name).
The supervisor pings the workers; one that dies or hangs is replaced, and one that fails
before it serves stops the whole gateway with an error.

Metrics: prometheus_client's multiprocess mode, switched on by $PROMETHEUS_MULTIPROC_DIR
(a fresh temporary directory per gateway) before the workers start; every worker's
/metrics answers the sum over all workers (gauges: over the live ones).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from k2trt.errors import K2Error
from k2trt.serve.app import Gateway, ServeConfig, create_app

log = logging.getLogger("k2trt.serve")

WORKER_ENV = "K2TRT_SERVE_WORKER"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FACTORY = "k2trt.serve.workers:worker_app"


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def worker_settings(
    triton_url: str | None,
    local: Path | None,
    model_name: str | None,
    config: ServeConfig,
    log_level: int = logging.INFO,
) -> str:
    """The JSON each worker builds its gateway from."""
    return json.dumps(
        {
            "triton_url": triton_url,
            "local": None if local is None else str(local),
            "model_name": model_name,
            "config": dataclasses.asdict(config),
            "log_level": log_level,
        }
    )


def worker_app() -> Gateway:
    """The gateway of one worker process (uvicorn calls this factory in each worker)."""
    from k2trt.cli.serve import make_backend

    settings: dict[str, Any] = json.loads(os.environ[WORKER_ENV])
    worker_format = LOG_FORMAT.replace("%(name)s", "%(name)s[%(process)d]")
    logging.basicConfig(level=settings["log_level"], format=worker_format, stream=sys.stderr)
    fields = settings["config"]
    fields["api_keys"] = tuple(fields["api_keys"])
    local = settings["local"]
    try:
        backend = make_backend(
            settings["triton_url"], None if local is None else Path(local), settings["model_name"]
        )
    except Exception as exc:  # one line, and no restart loop: the supervisor stops
        log.error("worker %d cannot load its backend: %s", os.getpid(), exc)
        sys.exit(STARTUP_FAILURE)
    return create_app(backend, ServeConfig(**fields))


def serve_workers(config: uvicorn.Config, sock: socket.socket, settings: str) -> None:
    """Run `config.workers` workers on `sock` until SIGTERM/SIGINT; each drains on exit."""
    metrics_dir = tempfile.mkdtemp(prefix="k2trt-metrics-")
    saved = {k: os.environ.get(k) for k in (WORKER_ENV, MULTIPROC_ENV)}
    os.environ[WORKER_ENV] = settings
    os.environ[MULTIPROC_ENV] = metrics_dir  # read by prometheus_client at import, in workers
    try:
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
        failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
        if failed:
            raise K2Error(f"worker {failed[0]} failed to start (its error is above); stopped")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(metrics_dir, ignore_errors=True)
