"""Real stores for the publish tests, each started on 127.0.0.1 on a free port: Debian's
`docker-registry` (CNCF distribution 2.8) and `moto_server` (PyPI moto[server], an S3
server); plus the releases they carry, built once per session.

A plugin (`pytest_plugins = ["store_servers"]` in each test file) so the session fixtures are
shared. A missing server skips its tests with the reason; with K2TRT_REQUIRE_STORES=1 (as
.ci/run sets) it fails them, as K2TRT_REQUIRE_TRITON does for the Triton tests.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from k2trt.release.sign import keygen
from release_fixtures import build, make_project
from store_helpers import FAST, Registry, Releases, S3Server, free_port, require_store, start


def start_registry(root: Path, auth: dict[str, Any] | None = None) -> Registry:
    """docker-registry with filesystem storage under ROOT (config generated, not templated)."""
    binary = shutil.which("docker-registry")
    require_store(
        None if binary else "docker-registry is not installed (apt-get install docker-registry)"
    )
    assert binary is not None
    port = free_port()
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    if auth:
        config["auth"] = auth
    (root / "config.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return Registry(start([binary, "serve", str(root / "config.yml")], root, port, "/v2/", {}))


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    running = start_registry(tmp_path_factory.mktemp("registry"))
    yield running
    running.server.stop()


@pytest.fixture(scope="session")
def login_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry that asks for HTTP Basic credentials: user `ci`, password `secret`."""
    try:
        import bcrypt
    except ImportError:
        require_store("bcrypt is not installed (the dev extra has it)")
    root = tmp_path_factory.mktemp("login-registry")
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    (root / "htpasswd").write_text(f"ci:{hashed}\n", encoding="utf-8")
    auth = {"htpasswd": {"realm": "k2trt-test", "path": str(root / "htpasswd")}}
    running = start_registry(root, auth)
    yield running
    running.server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    binary = shutil.which("moto_server", path=search)
    require_store(None if binary else "moto_server is not installed (pip install 'moto[server]')")
    assert binary is not None
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    # small parts, so a test can send a few-MB file in several (S3's minimum is 5 MiB)
    env = {"S3_UPLOAD_PART_MIN_SIZE": str(64 << 10)}
    server = start([binary, "-H", "127.0.0.1", "-p", str(port)], root, port, "/", env)
    yield S3Server(server)
    server.stop()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CLI reads for its retry policy: two quick tries."""
    monkeypatch.setenv("K2TRT_STORE_RETRIES", str(FAST.attempts))
    monkeypatch.setenv("K2TRT_STORE_BACKOFF", str(FAST.backoff))


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fast_retries: None) -> None:
    """Credentials for the test server, and nothing that could reach past 127.0.0.1 (no
    instance-metadata lookups, no profiles from the home directory)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="session")
def releases(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Releases:
    """kimi-k2-tiny 1.0.0 (weights by reference) and 1.1.0 (weights included), both signed."""
    root = tmp_path_factory.mktemp("publish")
    private, public = keygen(root / "keys")
    _, other = keygen(root / "other-keys")
    work = root / "work"  # shared: 1.1.0 reuses 1.0.0's stages (only packaging re-runs)
    signed = build(make_project(root, tiny_ckpt), root / "out", sign_key=private, workdir=work)
    spec = make_project(root, tiny_ckpt, version="1.1.0")
    weights = build(spec, root / "out", sign_key=private, include_weights=True, workdir=work)
    prepared = work / "prepared"
    assert (prepared / "config.json").is_file()
    return Releases(Path(signed.path), Path(weights.path), prepared, public, other)
