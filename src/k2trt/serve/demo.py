"""The gateway in `k2trt demo`: a chat and a tool round trip through the served API.

`roundtrip(ckpt)` serves `ckpt` on a free local port over the CPU reference backend, or over
a packaged Triton repository on the CPU tritonserver (replies scripted with $K2TRT_SCRIPT: a
tiny random model never calls a tool by itself, and the script still runs through the real
tokenizer, stop ids and tool-call parser), then, as a client (the `openai` SDK when
installed, else the standard library): streams a chat; sends a question with a tool, gets
the call, answers it with a tool result and gets the model's reply.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from k2trt.runtime.scripted import SCRIPT_ENV
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.server import ServerThread

API_KEY = "k2trt-demo-key"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CALL = (
    "Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'
)
REPLIES = ["Hello! I am a tiny Kimi K2.", TOOL_CALL, "It is sunny in Paris, 22 °C."]
WEATHER = {"city": "Paris", "sky": "sunny", "celsius": 22}


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def roundtrip(
    ckpt: Path, model_id: str | None = None, triton_package: Path | None = None
) -> dict[str, Any]:
    """Serve `ckpt` and run a streamed chat and a tool round trip against it; a summary.

    With `triton_package` (a `k2trt package` output for `ckpt`'s bundle) the gateway talks
    to the package's `chat` model on the CPU tritonserver (its `tensorrt_llm` swapped for the
    CPU stand-in on `ckpt`) over gRPC, as `k2trt serve --triton-url` does; else it runs the
    CPU reference backend in-process.

    >>> roundtrip(Path("tiny"))["answer"]  # doctest: +SKIP
    'It is sunny in Paris, 22 °C.'
    """
    with tempfile.TemporaryDirectory(prefix="k2trt-serve-demo-") as tmp:
        script = Path(tmp) / "script.json"
        script.write_text(json.dumps({"replies": REPLIES}), encoding="utf-8")
        if triton_package is None:
            from k2trt.runtime.local import LocalBackend

            with _env(SCRIPT_ENV, str(script)):
                backend = LocalBackend.load(ckpt, model_id)
            return {**_talk(backend), "backend": "local"}
        with _triton(triton_package, ckpt, script) as grpc_url:
            from k2trt.serve.triton_backend import TritonBackend

            remote = TritonBackend(grpc_url, model_id=model_id or ckpt.name)
            return {**_talk(remote), "backend": f"triton {grpc_url}"}


@contextlib.contextmanager
def _triton(package_dir: Path, ckpt: Path, script: Path) -> Iterator[str]:
    """The package on the CPU tritonserver with the stand-in engine; its gRPC address."""
    from k2trt.triton_repo.cpu_server import CpuTritonServer
    from k2trt.triton_repo.repository import use_cpu_standin

    repo = use_cpu_standin(package_dir, ckpt)
    with CpuTritonServer(repo, env={SCRIPT_ENV: str(script)}) as server:
        yield server.grpc_url


def _talk(backend: Any) -> dict[str, Any]:
    """The gateway over `backend` on a free port; a chat, then a tool round trip."""
    app = create_app(backend, ServeConfig(api_keys=(API_KEY,)))
    with ServerThread(app) as server:
        client = _Client(server.url, app.model)
        hello = client.chat([{"role": "user", "content": "Hello!"}], stream=True)
        question = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = client.chat(question, tools=TOOLS)
        call = first["message"]["tool_calls"][0]
        result = {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(WEATHER)}
        final = client.chat([*question, first["message"], result], tools=TOOLS)
    return {
        "url": server.url,
        "model": app.model,
        "client": client.kind,
        "chat": hello["message"]["content"],
        "tool_call": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
        "answer": final["message"]["content"],
        "finish_reasons": [hello["finish_reason"], first["finish_reason"], final["finish_reason"]],
    }


class _Client:
    """Chat completions through the openai SDK if installed, else urllib; plain dicts out."""

    def __init__(self, url: str, model: str) -> None:
        self.url = url
        self.model = model
        try:
            import openai
        except ImportError:
            self.kind = "urllib"
            self._sdk: Any = None
        else:
            self.kind = "openai"
            self._sdk = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)

    def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        stream: bool = False,
    ) -> dict[str, Any]:
        """{"message": the assistant message, "finish_reason": ...}."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": stream}
        if tools:
            body["tools"] = tools
        if self._sdk is not None:
            reply = self._sdk.chat.completions.create(**body)
            if stream:
                return _from_events(chunk.model_dump() for chunk in reply)
            choice = reply.choices[0]
            message = choice.message.model_dump(exclude_none=True)
            return {"message": message, "finish_reason": choice.finish_reason}
        return self._urllib(body)

    def _urllib(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            if not body["stream"]:
                choice = json.load(response)["choices"][0]
                return {"message": choice["message"], "finish_reason": choice["finish_reason"]}
            lines = (line.decode().strip() for line in response)
            data = (line[len("data: ") :] for line in lines if line.startswith("data: "))
            return _from_events(json.loads(d) for d in data if d != "[DONE]")


def _from_events(chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """A streamed (content-only) answer folded into a message."""
    text: list[str] = []
    finish = None
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            text.append((choice.get("delta") or {}).get("content") or "")
            finish = choice.get("finish_reason") or finish
    return {"message": {"role": "assistant", "content": "".join(text)}, "finish_reason": finish}
