"""Helpers for the publish tests: server processes, their logs, tampering, release variants.
The fixtures that start the servers are in store_servers.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from k2trt.checkpoint.manifest import sha256_file
from k2trt.release.assemble import release_id
from k2trt.release.store import RetryPolicy, StoreOptions

START_TIMEOUT = 20.0
FAST = RetryPolicy(attempts=2, backoff=0.01)  # unreachable stores fail in well under a second


def require_store(reason: str | None) -> None:
    """Skip (or, with K2TRT_REQUIRE_STORES=1 as in CI, fail) when a server cannot run."""
    if reason is None:
        return
    if os.environ.get("K2TRT_REQUIRE_STORES", "") not in ("", "0"):
        pytest.fail(f"K2TRT_REQUIRE_STORES is set but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A server process a test started; its log is the evidence tests count requests in."""

    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start(argv: list[str], root: Path, port: int, probe: str, env: dict[str, str]) -> Server:
    """Start a server and wait (bounded) until `probe` answers at all."""
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env}, start_new_session=True,
        )  # fmt: skip
    server = Server(proc, port, root, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=2):
                return server
        except urllib.error.HTTPError:  # an answer (401 from a registry that asks to log in)
            return server
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text(errors='replace')[-2000:]}")


@dataclass
class Registry:
    """A running docker-registry (distribution 2.8) with filesystem storage."""

    server: Server

    def url(self, repo: str) -> str:
        return f"oci://{self.server.host}/{repo}"

    def blob(self, sha256: str) -> Path:
        """Where distribution's filesystem driver keeps a blob's bytes."""
        v2 = self.server.root / "data" / "docker" / "registry" / "v2"
        return v2 / "blobs" / "sha256" / sha256[:2] / sha256 / "data"

    def uploads(self, repo: str) -> int:
        """Blob uploads completed into `repo`, from the registry's access log."""
        mark = f'"PUT /v2/{repo}/blobs/uploads/'
        return sum(1 for line in self.server.log_lines() if mark in line and '" 201 ' in line)


@dataclass
class S3Server:
    """A running moto_server."""

    server: Server

    @property
    def endpoint(self) -> str:
        return f"http://{self.server.host}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
        )  # fmt: skip

    def requests(self, method: str, bucket: str) -> list[str]:
        """Request lines the server logged for one bucket (werkzeug's access log)."""
        mark = f'"{method} /{bucket}/'
        return [line for line in self.server.log_lines() if mark in line]

    def bucket(self) -> str:
        name = f"k2trt-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def options(self, **kwargs: Any) -> StoreOptions:
        return StoreOptions(endpoint_url=self.endpoint, retry=FAST, **kwargs)


@dataclass
class Releases:
    signed: Path  # kimi-k2-tiny 1.0.0, weights referenced by hash, signed
    weights: Path  # kimi-k2-tiny 1.1.0 with its weights included, signed
    prepared: Path  # the prepared checkpoint 1.0.0 references (for pull --weights)
    public_key: Path
    other_key: Path  # a key that signed nothing here


def variant(release: Path, dest: Path) -> Path:
    """Another release under the same name and version (edited notes, recomputed id,
    unsigned): what a second build of a published version would be."""
    shutil.copytree(release, dest)
    (dest / "release.sig").unlink(missing_ok=True)
    notes = dest / "RELEASE_NOTES.md"
    notes.write_text(notes.read_text() + "\nrebuilt\n")
    manifest = json.loads((dest / "release.json").read_text())
    hashed = sha256_file(notes)
    manifest["files"]["RELEASE_NOTES.md"] = {"bytes": hashed.bytes, "sha256": hashed.sha256}
    manifest["id"] = release_id(manifest)
    (dest / "release.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest


@contextmanager
def replaced(path: Path, data: bytes) -> Iterator[None]:
    """A file's bytes swapped out of band for the duration (a store's copy tampered with)."""
    original = path.read_bytes()
    mode = path.stat().st_mode
    path.chmod(0o644)
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)
        path.chmod(mode)


def left_in(out: Path) -> list[str]:
    """What a refused pull left under OUT (should be nothing: no release, no temp dir)."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) if out.exists() else []


def sha(release: Path, path: str) -> str:
    """A file's sha256 as the release's release.json lists it."""
    data = json.loads((release / "release.json").read_text())
    digest: str = data["files"][path]["sha256"]
    return digest
