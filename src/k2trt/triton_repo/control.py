"""Triton's HTTP model-repository API: index, load, unload, readiness, model configs.

    control = TritonControl("127.0.0.1:8000")
    control.require_explicit()            # K2Error unless --model-control-mode=explicit
    control.load("preprocessing")         # re-reads config.pbtxt and the version directories
    [v.version for v in control.index() if v.name == "chat" and v.ready]

What Triton 2.51 does with these calls (measured on the CPU server, see docs/deploy.md):
`load` blocks until every version the model's version_policy names is loaded, then swaps them
in and unloads the versions the policy dropped once their requests in flight have finished; if
any version fails, the versions already serving stay as they were and the call answers 400
with the reason. A version that stays in the policy keeps running in place when only the
policy changed (and its directory did not); any other config change (a parameter, say)
reloads every version in a new process. A server in `none` or `poll` mode answers every load
and unload with 503 "explicit model load / unload is not allowed if polling is enabled".
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from k2trt.errors import K2Error

DEFAULT_TIMEOUT_S = 10.0
# No model has this name: unloading it is a no-op that only tells whether loads are allowed.
PROBE_MODEL = "k2trt-model-control-probe"
READY = "READY"


class ControlError(K2Error):
    """Triton answered a repository call with an error (or not at all)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class VersionState:
    """One row of the repository index."""

    name: str
    version: int
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state == READY


def base_url(url: str) -> str:
    """`host:port` or `http://host:port` -> `http://host:port` (no trailing slash).

    >>> base_url("127.0.0.1:8000"), base_url("http://triton:8000/")
    ('http://127.0.0.1:8000', 'http://triton:8000')
    """
    url = url.strip().rstrip("/")
    if url.startswith("https://"):
        raise K2Error(f"--triton {url}: expected http://HOST:PORT or HOST:PORT (Triton's HTTP)")
    return url if url.startswith("http://") else f"http://{url}"


def first_line(text: str) -> str:
    """The first non-empty line of a server message (Triton's reasons carry tracebacks).

    >>> first_line("Internal: RuntimeError: boom\\n\\nAt:\\n  model.py(10)")
    'Internal: RuntimeError: boom'
    """
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class TritonControl:
    """A client of one server's HTTP repository and health API (stdlib only).

    >>> TritonControl("127.0.0.1:8000").url
    'http://127.0.0.1:8000'
    """

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = base_url(url)
        self.timeout = timeout

    def _call(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")
        except TimeoutError as exc:
            waited = timeout or self.timeout
            raise ControlError(
                f"triton at {self.url}: no answer to {path} within {waited:g} s"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ControlError(f"triton at {self.url}: cannot connect ({reason})") from exc

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        status, text = self._call(method, path, body)
        if status != 200:
            raise ControlError(f"triton at {self.url}: {path}: {_error(text)}", status)
        return json.loads(text) if text else None

    def require_live(self) -> None:
        """ControlError naming the server unless it is up."""
        status, text = self._call("GET", "/v2/health/live")
        if status != 200:
            raise ControlError(f"triton at {self.url}: not live ({status} {_error(text)})", status)

    def require_explicit(self) -> None:
        """K2Error unless the server takes load/unload calls (explicit model control)."""
        status, text = self._call("POST", f"/v2/repository/models/{PROBE_MODEL}/unload", {})
        if status != 200:
            raise ControlError(
                f"triton at {self.url} does not take model loads ({_error(text)}): start it "
                f"with --model-control-mode=explicit --load-model=* (k2trt triton start "
                f"--explicit)",
                status,
            )

    def index(self) -> list[VersionState]:
        """Every model version the server knows, loaded or not."""
        rows = self._json("POST", "/v2/repository/index", {}) or []
        return [
            VersionState(r["name"], int(r["version"]), r.get("state", ""), r.get("reason", ""))
            for r in rows
            if str(r.get("version", "")).isdigit()
        ]

    def load(self, model: str, timeout: float | None = None) -> None:
        """(Re)load `model` from the repository; ControlError with Triton's reason if it fails
        or takes longer than `timeout` seconds."""
        status, text = self._call(
            "POST", f"/v2/repository/models/{model}/load", {}, timeout=timeout
        )
        if status != 200:
            raise ControlError(first_line(_error(text)) or f"HTTP {status}", status)

    def unload(self, model: str) -> None:
        """Unload every version of `model` (requests in flight finish first)."""
        self._json("POST", f"/v2/repository/models/{model}/unload", {})

    def model_ready(self, model: str, version: int | None = None) -> bool:
        """The model (or that version of it) is ready for requests."""
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
        return self._call("GET", path)[0] == 200

    def model_config(self, model: str) -> dict[str, Any]:
        """The loaded model's configuration, as Triton reports it (JSON)."""
        config = self._json("GET", f"/v2/models/{model}/config")
        if not isinstance(config, dict):
            raise ControlError(f"triton at {self.url}: {model}: no configuration")
        return config


def parameters(config: dict[str, Any]) -> dict[str, str]:
    """A model config's string parameters (JSON from the config API).

    >>> parameters({"parameters": {"k": {"string_value": "v"}}})
    {'k': 'v'}
    """
    return {k: str(v.get("string_value", "")) for k, v in config.get("parameters", {}).items()}


def _error(text: str) -> str:
    """Triton's {"error": "..."} body, else the text itself."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()
    return str(data.get("error", text)) if isinstance(data, dict) else text.strip()
