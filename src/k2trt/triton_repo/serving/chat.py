"""`chat`: the entry point, a decoupled BLS model over `preprocessing` and `tensorrt_llm`.

For each request (in its own thread): `preprocessing` once (a BLS call); `tensorrt_llm`
streamed; every response's ids through this request's own `DeltaStream` (incremental
detokenizer, stop strings, streaming tool-call parser: O(new ids), in this thread, no call
to another model); each chunk sent at once as a delta, the last with finish_reason and usage
and the final flag. A rejected request gets one error response naming the field. Generation
stops when the client cancels, or when a stop string or stop id ends the turn: `chat` cancels
the `tensorrt_llm` request (the BLS iterator's cancel() where the server has it, 2.57+, and a
`cancel` request naming its key, which works on any version).

Until k2trt 0.1's issue 15, every streamed piece was a BLS round trip to `postprocessing`
(one instance, one process): about 1 ms of CPU per token, which capped a deployment near
1,000 tokens/s. `postprocessing` stays in the repository with the same interface, for
clients that call it themselves; `chat` no longer does.

Versions move together: `chat` version N calls `preprocessing` version N (`tensorrt_llm` at
whatever version it serves) and detokenizes with version N's model files (its own
k2trt-model-files, else those of `postprocessing` N beside it: a repository packaged before
chat had its own). A rollout (`k2trt release deploy`) loads a new N of each beside the old
ones, then switches `chat`: a request in flight keeps its version to the end, and no request
pairs one release's template with another's tokenizer or parser.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from k2trt.runtime.chat import ModelFiles
from k2trt.runtime.deltas import DeltaStream
from k2trt.runtime.types import ChatChunk
from k2trt.runtime.wire import CHAT_INPUTS, chunk_to_outputs, scalar, strings
from k2trt.triton_repo.serving.common import TritonModel
from k2trt.triton_repo.serving.post import Step
from k2trt.triton_repo.serving.pre import post_request
from k2trt.triton_repo.spec import (
    LLM_MODEL,
    MODEL_FILES_DIR,
    P_LLM,
    P_MODEL_FILES,
    P_MODEL_ID,
    P_POST,
    P_PRE,
    POST_MODEL,
    PRE_MODEL,
    PRE_OUTPUTS,
)

LLM_OUTPUT_NAMES = ["output_ids", "finish_reason"]
GUIDE_TYPE = "structural_tag"  # xgrammar's structural tag, as TensorRT-LLM's GuidedDecodingParams


class _Failed(Exception):
    """A sub-model answered with an error: its text goes to the client as is."""


def llm_arrays(pre: Mapping[str, NDArray[Any]], key: str) -> dict[str, NDArray[Any]]:
    """tensorrt_llm's inputs for a preprocessed request (batch dimension 1)."""
    out = {
        "input_ids": np.asarray(pre["input_ids"], dtype=np.int32).reshape(1, -1),
        "max_tokens": np.asarray(pre["max_tokens"], dtype=np.int32).reshape(1, 1),
        "temperature": np.asarray(pre["temperature"], dtype=np.float32).reshape(1, 1),
        "top_p": np.asarray(pre["top_p"], dtype=np.float32).reshape(1, 1),
        "stop_token_ids": np.asarray(pre["stop_token_ids"], dtype=np.int32).reshape(1, -1),
        "streaming": np.array([[True]]),
        "request_key": strings([key], (1, 1)),
    }
    seed = np.asarray(pre["seed"], dtype=np.uint64).reshape(-1)
    if seed.size:
        out["seed"] = seed.reshape(1, 1)
    words = np.asarray(pre["stop_words"], dtype=np.object_).reshape(-1)
    if words.size:  # the LLM stops at the same point the DeltaStream does
        out["stop_words"] = words.reshape(1, -1)
    guide = np.asarray(pre.get("guide", []), dtype=np.object_).reshape(-1)
    if guide.size:  # the tool-call grammar preprocessing compiled (k2trt.chat.grammar)
        out["guided_decoding_guide_type"] = strings([GUIDE_TYPE], (1, 1))
        out["guided_decoding_guide"] = guide.reshape(1, 1)
    return out


def files_dir(model_dir: Path, version: int, name: str, post: str) -> Path:
    """Where chat version `version` finds its model files: its own (version, then model
    directory), else those of the postprocessing model beside it (same version first).

    >>> files_dir(Path("/nonexistent/chat"), 1, "k2trt-model-files", "postprocessing")
    PosixPath('/nonexistent/postprocessing/k2trt-model-files')
    """
    sibling = model_dir.parent / post
    candidates = [model_dir / str(version), model_dir, sibling / str(version), sibling]
    found = next((d / name for d in candidates if (d / name).is_dir()), None)
    return found or sibling / name


class ChatModel(TritonModel):
    """Decoupled BLS; one thread per request (see the module docstring)."""

    def setup(self) -> None:
        self.pre = self.param(P_PRE, PRE_MODEL)
        self.llm = self.param(P_LLM, LLM_MODEL)
        post = self.param(P_POST, POST_MODEL)
        path = files_dir(
            self.model_dir, self.version, self.param(P_MODEL_FILES, MODEL_FILES_DIR), post
        )
        self.files = ModelFiles.load(path, self.params.get(P_MODEL_ID) or None)
        self.input_names = [f.name for f in CHAT_INPUTS]
        # this version's preprocessing (see the module docstring); the LLM is not pinned
        self.pinned = {self.pre: self.version}

    def execute(self, requests: list[Any]) -> None:
        """Triton's entry point: start each request's thread and return at once."""
        for request in requests:
            sender = request.get_response_sender()
            turn = _Turn(self, request, sender)
            threading.Thread(target=turn.run, daemon=True).start()

    # ---- calls to the other models ----

    def call(self, model: str, arrays: Mapping[str, NDArray[Any]], outputs: list[str]) -> Any:
        """One BLS request; its response (an error raises _Failed with the model's text)."""
        response = self._request(model, arrays, outputs).exec()
        if response.has_error():
            raise _Failed(response.error().message())
        return response

    def stream(self, model: str, arrays: Mapping[str, NDArray[Any]], outputs: list[str]) -> Any:
        """A decoupled BLS request: an iterator of responses."""
        return self._request(model, arrays, outputs).exec(decoupled=True)

    def _request(self, model: str, arrays: Mapping[str, NDArray[Any]], outputs: list[str]) -> Any:
        return self.pb.InferenceRequest(
            model_name=model,
            inputs=[self.pb.Tensor(name, value) for name, value in arrays.items()],
            requested_output_names=outputs,
            model_version=self.pinned.get(model, -1),
        )


class _Turn:
    """One chat request from first call to final response."""

    def __init__(self, model: ChatModel, request: Any, sender: Any) -> None:
        self.m = model
        self.request = request
        self.sender = sender
        self.key = uuid.uuid4().hex
        self.out: DeltaStream | None = None  # this request's detokenizer and parser
        self.finished = False  # the final response went out

    def run(self) -> None:
        """The whole turn; any failure becomes the request's error response."""
        try:
            self._run()
        except Exception as exc:
            message = (
                str(exc)
                if isinstance(exc, _Failed)
                else f"chat failed: {type(exc).__name__}: {exc}"
            )
            if not self.finished:
                self.finished = True
                self.sender.send(self.m.error(message), flags=self.m.final)

    def _run(self) -> None:
        names = [t.name for t in PRE_OUTPUTS]
        pre_in = self.m.inputs(self.request, self.m.input_names)
        pre = self.m.outputs(self.m.call(self.m.pre, pre_in, names), names)
        request = post_request(scalar(pre, "request"))
        self.out = DeltaStream(self.m.files, request, int(scalar(pre, "prompt_tokens")))
        if not self._send(self._step([])):  # a named tool choice opens its call at once
            self._generate(pre)

    def _generate(self, pre: Mapping[str, NDArray[Any]]) -> None:
        """Stream tensorrt_llm, each response's ids through the DeltaStream, each chunk to
        the client."""
        responses = self.m.stream(self.m.llm, llm_arrays(pre, self.key), LLM_OUTPUT_NAMES)
        overrun = False
        for response in responses:
            if response.has_error():
                raise _Failed(response.error().message())
            if self.request.is_cancelled():
                self._cancelled(responses)
                return
            out = self.m.outputs(response, LLM_OUTPUT_NAMES)
            ids = np.asarray(out["output_ids"]).reshape(-1).tolist() if "output_ids" in out else []
            reason = scalar(out, "finish_reason") if "finish_reason" in out else ""
            step = self._step(ids, final=bool(reason), reason=reason)
            if self._send(step) or reason:
                return
            if step.done and overrun:
                # The LLM stops by itself at stop ids and stop strings, so its next response
                # after `done` is its last; one more piece means it did not: stop it.
                self._stop_llm(responses)
                self._send(self._step([], final=True))
                for _ in responses:  # the cancelled stream ends promptly; let it
                    pass
                return
            overrun = step.done
        self._send(self._step([], final=True))

    def _cancelled(self, responses: Any) -> None:
        """The client went away: stop the LLM, release the request."""
        self._stop_llm(responses)
        self.m.log(f"k2trt: chat request {self.key} cancelled by the client")
        code = getattr(self.m.pb.TritonError, "CANCELLED", None)
        error = self.m.pb.TritonError("cancelled by the client", *(() if code is None else (code,)))
        self.finished = True
        with contextlib.suppress(Exception):  # the client is gone; nothing to tell it
            response = self.m.pb.InferenceResponse(output_tensors=[], error=error)
            self.sender.send(response, flags=self.m.final)

    def _step(self, ids: list[int], final: bool = False, reason: str = "") -> Step:
        """The chunks for new ids (and, when `final`, the last chunk with the reason)."""
        assert self.out is not None
        chunks = self.out.feed(ids)
        if final:
            chunks.append(self.out.finish(reason or None))
        return Step(chunks, self.out.done)

    def _send(self, step: Step) -> bool:
        """Send the step's chunks as responses; True once the final one has gone."""
        for chunk in step.chunks:
            if chunk.finish_reason:
                self.finished = True
                self.sender.send(self._response(chunk), flags=self.m.final)
                return True
            if chunk.content or chunk.tool_calls:
                self.sender.send(self._response(chunk))
        return False

    def _response(self, chunk: ChatChunk) -> Any:
        return self.m.response(chunk_to_outputs(chunk))

    def _stop_llm(self, responses: Any) -> None:
        """Cancel the LLM request: the iterator's cancel() (python_backend 25.04+), and a
        `cancel` request naming our key (any version; 2.51 has no cancel())."""
        cancel = getattr(responses, "cancel", None)
        if callable(cancel):
            cancel()
        arrays = {"request_key": strings([self.key], (1, 1)), "cancel": np.array([[True]])}
        for _ in self.m.stream(self.m.llm, arrays, []):
            pass
