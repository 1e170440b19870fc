"""A real tritonserver on a CPU-only machine: the 2.51 build bundled in the nvidia-pytriton wheel.

The wheel carries the server binary, the Python backend and one backend stub per Python
version. We run the raw binary (not PyTriton's API) against a model repository:

    with CpuTritonServer(repo, env={"K2TRT_SCRIPT": "..."}) as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

The stub embeds whatever `libpython3.11.so` the loader finds, and every model's `model.py`
runs in that interpreter. Debian's (`apt-get install libpython3.11 python3-numpy`) works;
a pyenv-built one crashed on every BYTES tensor. `model.py` cannot see our virtual
environment either (the stub ignores PYTHONPATH), so the server gets `K2TRT_PYTHONPATH`
= this environment's site-packages, which the installed model.py adds with
`site.addsitedir` (that also runs the editable install's .pth file, so k2trt imports).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from k2trt.errors import K2Error

STUB_PYTHON = "3.11"
# Where Debian/Ubuntu put the shared libpython and numpy for the system interpreter.
SYSTEM_LIBPYTHON = (
    Path(f"/usr/lib/x86_64-linux-gnu/libpython{STUB_PYTHON}.so.1.0"),
    Path(f"/usr/lib/aarch64-linux-gnu/libpython{STUB_PYTHON}.so.1.0"),
    Path(f"/usr/lib64/libpython{STUB_PYTHON}.so.1.0"),
)
SYSTEM_NUMPY = Path("/usr/lib/python3/dist-packages/numpy")
MIN_GLIBC = (2, 35)
READY_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 60
EXIT_TIMEOUT_S = 3  # in-flight requests get this long after SIGTERM


def _site_packages() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def _glibc_too_old() -> str | None:
    name, version = platform.libc_ver()
    if name != "glibc":
        return f"needs glibc >= {MIN_GLIBC[0]}.{MIN_GLIBC[1]} (found {name or 'no libc'})"
    found = tuple(int(p) for p in version.split(".")[:2])
    if found < MIN_GLIBC:
        return f"needs glibc >= {MIN_GLIBC[0]}.{MIN_GLIBC[1]} (found {version})"
    return None


def available() -> str | None:
    """Why the CPU server cannot run here (a skip reason), or None when it can.

    >>> available() is None or "apt-get" in available() or "pytriton" in available()
    True
    """
    site = _site_packages()
    if site is None:
        return "nvidia-pytriton is not installed (pip install nvidia-pytriton==0.7.0)"
    root = site / "pytriton" / "tritonserver"
    stub = root / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub"
    for path in (root / "bin" / "tritonserver", stub, site / "nvidia_pytriton.libs"):
        if not path.exists():
            return f"nvidia-pytriton is incomplete: {path} is missing"
    if (why := _glibc_too_old()) is not None:
        return why
    if not any(p.exists() for p in SYSTEM_LIBPYTHON):
        return (
            f"the Python backend stub needs the system libpython{STUB_PYTHON} "
            f"(apt-get install libpython{STUB_PYTHON} python3-numpy)"
        )
    if not SYSTEM_NUMPY.is_dir():
        return "the Python backend stub needs the system numpy (apt-get install python3-numpy)"
    return None


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python_path() -> str:
    """K2TRT_PYTHONPATH for the server: this environment's site-packages (and k2trt's root)."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    spec = importlib.util.find_spec("k2trt")
    if spec is not None and spec.origin is not None:
        dirs.append(str(Path(spec.origin).parent.parent))
    return os.pathsep.join(dict.fromkeys(dirs))


def stub_search_path(path: str, system_bin: str = "/usr/bin") -> str:
    """PATH for the server, so the stub's embedded interpreter finds its own home.

    The embedded (Debian) libpython works out sys.prefix by looking for `python3` on PATH.
    Inside an activated virtual environment that is the venv's python, whose pyvenv.cfg points
    at the interpreter it was made from (pyenv here): the stub then loads that build's
    extension modules (`_ssl`...), which do not link against Debian's libpython. So venv `bin`
    directories are dropped and the system's comes first.

    >>> stub_search_path("/tmp/nothing-here/bin:/usr/local/bin")
    '/usr/bin:/tmp/nothing-here/bin:/usr/local/bin'
    """
    kept = [d for d in path.split(os.pathsep) if d and not (Path(d).parent / "pyvenv.cfg").exists()]
    return os.pathsep.join([system_bin, *(d for d in kept if d != system_bin)])


def install_server(dest: Path) -> Path:
    """Lay out bin/, backends/ (with the 3.11 stub) and caches/ under `dest`; the binary."""
    site = _site_packages()
    if site is None or (why := available()) is not None:
        raise K2Error(f"cannot run the CPU tritonserver: {why}")
    root = site / "pytriton" / "tritonserver"
    for part in ("bin", "backends", "caches"):
        shutil.copytree(root / part, dest / part, dirs_exist_ok=True)
    stub = root / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub"
    shutil.copy2(stub, dest / "backends" / "python" / stub.name)
    return dest / "bin" / "tritonserver"


class CpuTritonServer:
    """tritonserver 2.51 (CPU) on free local ports, serving `repo`; a context manager.

    `env` adds variables to the server's environment (e.g. K2TRT_SCRIPT); `ports` fixes the
    HTTP and gRPC ports (0: a free one each). The log is kept in
    `log_path`; a server that exits or is not ready within `timeout` raises K2Error with the
    log's tail. Exiting the context kills the server's process group."""

    def __init__(
        self,
        repo: Path,
        env: Mapping[str, str] | None = None,
        timeout: float = READY_TIMEOUT_S,
        extra_args: tuple[str, ...] = (),
        binary: Path | None = None,
        ports: tuple[int, int] = (0, 0),
    ) -> None:
        self.repo = Path(repo)
        # A tritonserver installed beside its backends/ and caches/ (NVIDIA's containers:
        # /opt/tritonserver/bin/tritonserver) instead of the CPU build in nvidia-pytriton.
        self.binary = binary
        self.env = dict(env or {})
        self.timeout = timeout
        self.extra_args = extra_args
        self.ports = ports  # (HTTP, gRPC); 0: a free port picked at start
        self.http_port = 0
        self.grpc_port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path()

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def argv(self, binary: Path) -> list[str]:
        """The server's command line."""
        root = binary.parent.parent
        return [
            str(binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={root / 'backends'}",
            f"--cache-directory={root / 'caches'}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            # as upstream's launcher does: config.pbtxt is complete, nothing is guessed
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            *self.extra_args,
        ]

    def start(self) -> CpuTritonServer:
        """Start the server and wait until /v2/health/ready answers 200."""
        self._dir = tempfile.TemporaryDirectory(prefix="k2trt-tritonserver-")
        work = Path(self._dir.name)
        binary = self.binary or install_server(work / "server")
        site = _site_packages()
        self.http_port, self.grpc_port = (port or free_port() for port in self.ports)
        env = dict(os.environ)
        if self.binary is None and site is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(site / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH")) if p
            )
        env.setdefault("K2TRT_PYTHONPATH", python_path())
        env["PATH"] = stub_search_path(env.get("PATH", ""))
        env.pop("VIRTUAL_ENV", None)
        env.update(self.env)
        self.log_path = work / "tritonserver.log"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.argv(binary),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stubs die with it
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise K2Error(
                    f"tritonserver exited with code {self._proc.returncode} before it was "
                    f"ready; log tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise K2Error(
            f"tritonserver was not ready within {self.timeout:.0f} s; log tail:\n{self.log_tail()}"
        )

    def exited(self) -> int | None:
        """The server's exit code once it has exited by itself, else None."""
        return None if self._proc is None else self._proc.poll()

    def log_text(self) -> str:
        """The whole server log so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        """Kill the server's process group (TERM, then KILL if it lingers) and clean up."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=EXIT_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None:
            _signal_group(proc, signal.SIGKILL)  # stubs left behind, if any
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> CpuTritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
