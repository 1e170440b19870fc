"""Test helpers for the Triton repository: a stand-in for `triton_python_backend_utils` that runs
the packaged models in-process, and the real CPU tritonserver as a session fixture.

`FakePb` implements the part of the Python backend API the models use, including BLS
(`InferenceRequest.exec`, decoupled too), so the four packaged models (their model.py as
installed) can be wired together without a server. `cpu_triton` starts one real
tritonserver 2.51 per session on a packaged tiny bundle.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from k2trt.triton_repo import spec

FINAL = 1
PB_MODULE = "triton_python_backend_utils"


class FakeTensor:
    def __init__(self, name: str, value: Any) -> None:
        self._name = name
        self._value = np.asarray(value)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> Any:
        return self._value


class FakeError:
    CANCELLED = 7

    def __init__(self, message: str, code: int | None = None) -> None:
        self._message = message
        self.code = code

    def message(self) -> str:
        return self._message


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: Any = None) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> Any:
        return self._error

    def output_tensors(self) -> list[FakeTensor]:
        return self._outputs

    def arrays(self) -> dict[str, Any]:
        return {t.name(): t.as_numpy() for t in self._outputs}


class FakeSender:
    """Collects (response, flags); a queue lets BLS callers read a decoupled stream."""

    def __init__(self) -> None:
        self.sent: list[tuple[FakeResponse | None, int]] = []
        self.queue: queue.Queue[tuple[FakeResponse | None, int]] = queue.Queue()
        self.finished = threading.Event()

    def send(self, response: FakeResponse | None = None, flags: int = 0) -> None:
        if self.finished.is_set():
            raise RuntimeError("response sent after the final flag")
        self.sent.append((response, flags))
        self.queue.put((response, flags))
        if flags & FINAL:
            self.finished.set()

    def responses(self) -> list[FakeResponse]:
        return [r for r, _ in self.sent if r is not None]


class FakeRequest:
    def __init__(self, inputs: Mapping[str, Any], cancelled: threading.Event | None = None) -> None:
        self.tensors = {k: FakeTensor(k, v) for k, v in inputs.items()}
        self.sender = FakeSender()
        self.cancelled = cancelled or threading.Event()
        self.cancel_checks_after_final = 0

    def get_response_sender(self) -> FakeSender:
        return self.sender

    def is_cancelled(self) -> bool:
        if self.sender.finished.is_set():  # tritonserver 2.51 crashes on this
            self.cancel_checks_after_final += 1
        return self.cancelled.is_set()


class _Stream:
    """A decoupled BLS response iterator (with cancel(), as python_backend 25.04+)."""

    def __init__(self, request: FakeRequest, timeout: float) -> None:
        self.request = request
        self.timeout = timeout

    def __iter__(self) -> Iterator[FakeResponse]:
        while True:
            response, flags = self.request.sender.queue.get(timeout=self.timeout)
            if response is not None:
                yield response
            if flags & FINAL:
                return

    def cancel(self) -> None:
        self.request.cancelled.set()


class FakePb:
    """The `triton_python_backend_utils` surface the adapters use; BLS goes to `models`."""

    TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    Tensor = FakeTensor
    InferenceResponse = FakeResponse
    TritonError = FakeError

    def __init__(self) -> None:
        self.models: dict[str, Any] = {}
        self.log: list[str] = []
        self.bls_calls: list[str] = []
        pb = self

        class Logger:
            @staticmethod
            def log_info(message: str) -> None:
                pb.log.append(message)

        class InferenceRequest:
            def __init__(
                self,
                model_name: str,
                inputs: list[FakeTensor],
                requested_output_names: list[str],
                model_version: int = -1,
            ) -> None:
                self.model = model_name
                self.version = model_version
                self.request = FakeRequest({t.name(): t.as_numpy() for t in inputs})

            def exec(self, decoupled: bool = False) -> Any:
                pb.bls_calls.append(self.model)
                model = pb.models[self.model]
                result = model.execute([self.request])
                if decoupled:
                    return _Stream(self.request, timeout=30)
                return result[0]

        self.Logger = Logger
        self.InferenceRequest = InferenceRequest

    @staticmethod
    def get_input_tensor_by_name(request: FakeRequest, name: str) -> FakeTensor | None:
        return request.tensors.get(name)

    @staticmethod
    def get_output_tensor_by_name(response: FakeResponse, name: str) -> FakeTensor | None:
        return next((t for t in response.output_tensors() if t.name() == name), None)


def model_args(repo: Path, name: str) -> dict[str, str]:
    """What Triton passes to initialize(): config JSON (from config.pbtxt), directories."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    text = (repo / name / "config.pbtxt").read_text(encoding="utf-8")
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return {
        "model_config": json.dumps(as_json),
        "model_repository": str(repo / name),
        "model_version": spec.VERSION,
    }


def load_models(repo: Path, pb: FakePb) -> dict[str, Any]:
    """Load every packaged model as Triton does: run its 1/model.py (`pb` standing in for
    triton_python_backend_utils), then TritonPythonModel().initialize(args)."""
    for name in spec.MODELS:
        path = repo / name / spec.VERSION / "model.py"
        module = types.ModuleType(f"triton_model_{name}")
        saved = sys.modules.get(PB_MODULE)
        sys.modules[PB_MODULE] = pb  # type: ignore[assignment]
        try:
            exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)
        finally:
            if saved is None:
                del sys.modules[PB_MODULE]
            else:
                sys.modules[PB_MODULE] = saved
        model = module.TritonPythonModel()
        model.initialize(model_args(repo, name))
        pb.models[name] = model
    return pb.models


def serving(pb: FakePb, name: str) -> Any:
    """The serving model (`k2trt.triton_repo.serving`) behind a loaded model.py."""
    return pb.models[name].model


# ---- the real CPU server ----

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CONTENT = "Let me check the weather for you."
ARGUMENTS = '{"city": "Paris"}'
REPLY = (
    f"{CONTENT}<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    f"<|tool_call_argument_begin|>{ARGUMENTS}<|tool_call_end|><|tool_calls_section_end|>"
)
SCRIPTED_REPLIES = 6  # each scripted test uses one; the order does not matter (all the same)
DELAY_S = 0.02  # per token: a cancel test has time to cancel mid-stream


@dataclass
class RunningTriton:
    server: Any  # CpuTritonServer
    package: Path
    repo: Path
    checkpoint: Path


def write_script(path: Path) -> Path:
    path.write_text(json.dumps({"replies": [REPLY] * SCRIPTED_REPLIES, "delay_s": DELAY_S}))
    return path


def require_cpu_triton() -> None:
    """Skip (or, with K2TRT_REQUIRE_TRITON=1 as in CI, fail) when the server cannot run."""
    from k2trt.triton_repo.cpu_server import available

    reason = available()
    if reason is None:
        return
    if os.environ.get("K2TRT_REQUIRE_TRITON", "") not in ("", "0"):
        pytest.fail(f"K2TRT_REQUIRE_TRITON is set but the CPU tritonserver cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_package(prepared_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`k2trt package` of a tiny bundle (H200x8), tensorrt_llm swapped for the CPU stand-in."""
    from k2trt.build.bundle import build_bundle
    from k2trt.build.spec import BuildSpec
    from k2trt.triton_repo.repository import package, use_cpu_standin

    root = tmp_path_factory.mktemp("triton")
    bundle = build_bundle(prepared_ckpt, root / "bundle", BuildSpec(gpus="H200x8"))
    out = package(bundle, root / "pkg").path
    use_cpu_standin(out, prepared_ckpt)
    return out


@pytest.fixture(scope="session")
def cpu_triton(
    tiny_package: Path, prepared_ckpt: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningTriton]:
    """One real tritonserver for the session, serving the tiny package with a script."""
    require_cpu_triton()
    from k2trt.triton_repo.cpu_server import CpuTritonServer
    from k2trt.triton_repo.repository import REPOSITORY_DIR

    script = write_script(tmp_path_factory.mktemp("script") / "script.json")
    repo = tiny_package / REPOSITORY_DIR
    with CpuTritonServer(repo, env={"K2TRT_SCRIPT": str(script)}) as server:
        yield RunningTriton(server, tiny_package, repo, prepared_ckpt)
        log = server.log_text()
    # A model that crashed or raised shows here even when every request got its answer.
    for sign in ("Signal (", "Traceback", "Stub process", "unhealthy"):
        assert sign not in log, f"{sign!r} in the server log:\n{log[-4000:]}"
