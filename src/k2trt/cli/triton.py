"""`k2trt triton start`: a packaged repository served on this machine by a real tritonserver."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from k2trt.errors import CheckFailed, K2Error
from k2trt.output import OUTPUT

app = typer.Typer(
    help="A local tritonserver (the CPU build nvidia-pytriton ships) for packaged repositories.",
    no_args_is_help=True,
)
POLL_S = 0.5


def repository_of(path: Path) -> tuple[Path, Path | None]:
    """(model repository, package directory or None) for a package or a repository path."""
    from k2trt.triton_repo.repository import RECORD_NAME, REPOSITORY_DIR

    if (path / RECORD_NAME).is_file():
        return path / REPOSITORY_DIR, path
    if path.is_dir() and any((d / "config.pbtxt").is_file() for d in path.iterdir()):
        return path, path.parent if (path.parent / RECORD_NAME).is_file() else None
    raise K2Error(
        "expected a `k2trt package` output or a Triton model repository (model directories "
        "with config.pbtxt)",
        path=path,
    )


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server the way Ctrl-C does


@app.command("start")
def start(
    repo: Path = typer.Argument(..., help="A `k2trt package` output (or its model_repository)."),
    cpu_standin: Path = typer.Option(
        None,
        "--cpu-standin",
        help="Serve tensorrt_llm with the CPU reference engine on this (tiny or sliced) "
        "checkpoint; rewrites the package's tensorrt_llm/config.pbtxt.",
    ),
    explicit: bool = typer.Option(
        False,
        "--explicit",
        help="Explicit model control (every model loaded at start; `k2trt release deploy` "
        "needs it).",
    ),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP port on 127.0.0.1."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port on 127.0.0.1."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for readiness."),
) -> None:
    """Run tritonserver 2.51 (CPU) on a packaged repository until Ctrl-C or SIGTERM.

    The server listens on 127.0.0.1 only; $K2TRT_SCRIPT scripts the stand-in's replies."""
    from k2trt.triton_repo.cpu_server import CpuTritonServer
    from k2trt.triton_repo.repository import use_cpu_standin

    models, package = repository_of(repo)
    if cpu_standin is not None:
        if package is None:
            raise K2Error(
                "--cpu-standin needs the package directory (k2trt-package.json)", path=repo
            )
        use_cpu_standin(package, cpu_standin)
        OUTPUT.note(f"tensorrt_llm runs the CPU reference engine on {cpu_standin}")
    extra = ("--model-control-mode=explicit", "--load-model=*") if explicit else ()
    server = CpuTritonServer(
        models, timeout=timeout, extra_args=extra, ports=(http_port, grpc_port)
    )
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with server:
            _serve(server, "explicit" if explicit else "none")
    except KeyboardInterrupt:
        OUTPUT.note("stopping tritonserver")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(server: Any, mode: str) -> None:
    """Say where the server is, then wait for it: CheckFailed if it exits by itself."""
    data = {
        "repository": str(server.repo),
        "http": f"http://{server.http_url}",
        "grpc": server.grpc_url,
        "model_control": mode,
    }
    OUTPUT.result(data, _started)
    while (code := server.exited()) is None:
        time.sleep(POLL_S)
    raise CheckFailed(f"tritonserver exited with code {code}; log tail:\n{server.log_tail()}")


def _started(data: dict[str, str]) -> str:
    return (
        f"tritonserver serving {data['repository']} ({data['model_control']} model control)\n"
        f"  HTTP  {data['http']}\n  gRPC  {data['grpc']}\nCtrl-C (or SIGTERM) stops it"
    )
