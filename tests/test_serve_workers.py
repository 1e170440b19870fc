"""`k2trt serve --workers 2`: a real gateway process with two workers on 127.0.0.1. Metrics are
summed over the workers (a killed worker's counts included); a killed worker is replaced; a
worker that cannot start stops the gateway with an error."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CLI = (
    "import typer; from k2trt.cli.serve import command; "
    "app = typer.Typer(); app.command()(command); app()"
)


def closed_port() -> int:
    """A local port with nothing listening (the Triton URL that does not answer)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def workers_of(pid: int) -> list[int]:
    """The worker processes of the gateway `pid` (uvicorn spawns them with multiprocessing)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = []
    for child in map(int, children):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            out.append(child)
    return sorted(out)


def wait_for(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def answers(url: str) -> bool:
    """A poll (on /v1/models: the /health count stays exact)."""
    try:
        with httpx.Client() as client:
            return client.get(url + "/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def health(url: str) -> None:
    with httpx.Client() as client:  # a fresh connection: any worker may take it
        assert client.get(url + "/health", timeout=30).status_code == 200


def counted(url: str, route: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    pattern = rf'^k2trt_requests_total{{route="{re.escape(route)}",status="200"}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return 0.0 if match is None else float(match.group(1))


@pytest.mark.slow
def test_two_workers_sum_metrics_and_a_killed_worker_is_replaced() -> None:
    args = ["--triton-url", f"127.0.0.1:{closed_port()}", "--port", "0", "--workers", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.endswith("; 2 workers\n"), line
        url = next(w for w in line.split() if w.startswith("http://"))
        wait_for(lambda: len(workers_of(proc.pid)) == 2 and answers(url), 60, "two workers")
        for _ in range(20):
            health(url)
        first = workers_of(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        wait_for(
            lambda: len(workers_of(proc.pid)) == 2 and first[0] not in workers_of(proc.pid),
            30,
            "the killed worker's replacement",
        )
        wait_for(lambda: answers(url), 30, "an answer after the restart")
        for _ in range(10):
            health(url)
        # Every /health is counted once, whichever worker (dead or alive) served it.
        assert counted(url, "/health") == 30
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        err = proc.communicate()[1]
        assert f"Child process [{first[0]}] died" in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_workers_that_cannot_start_stop_the_gateway(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    args = ["--local", str(missing), "--port", "0", "--workers", "2"]
    done = subprocess.run(
        [sys.executable, "-u", "-c", CLI, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "cannot load its backend" in done.stderr
    assert "failed to start (its error is above); stopped" in done.stderr
