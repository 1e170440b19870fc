"""`postprocessing`: generated ids -> content and tool-call deltas, with per-request state.

A request is a series of calls sharing a `request_key`. The first carries the request (tools,
tool_choice, stop) and the prompt's token count; every call may carry new ids; the last says
`final` (with the engine's finish reason) and drops the state. The state is a
`k2trt.runtime.chat.DeltaStream`: incremental detokenizer, stop strings, streaming tool-call
parser; each call costs O(new ids), nothing is decoded twice, and every chunk is a delta.
States idle longer than the TTL (a caller that died mid-stream) are dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from k2trt.runtime.chat import ModelFiles
from k2trt.runtime.deltas import DeltaStream
from k2trt.runtime.types import ChatChunk, RequestRejected
from k2trt.runtime.wire import (
    CHAT_OUTPUTS,
    NUMPY_TYPES,
    chunk_to_outputs,
    rejection_message,
    scalar,
)
from k2trt.triton_repo.serving.common import TritonModel
from k2trt.triton_repo.serving.pre import post_request
from k2trt.triton_repo.spec import P_STATE_TTL, POST_INPUTS, STATE_TTL_S


@dataclass
class _State:
    stream: DeltaStream
    touched: float


@dataclass(frozen=True)
class Step:
    """What one call returns: chunks in order, and whether the turn is over."""

    chunks: list[ChatChunk]
    done: bool


class DeltaStates:
    """Per-request DeltaStreams by key, expiring after `ttl_s` idle seconds.

    >>> states = DeltaStates(files)  # doctest: +SKIP
    >>> states.step("k", [], request='{"tools": null, ...}', prompt_tokens=9)  # doctest: +SKIP
    >>> states.step("k", [1234], final=True, reason="length").chunks[-1].finish_reason
    ... # doctest: +SKIP
    'length'
    """

    def __init__(
        self,
        files: ModelFiles,
        ttl_s: float = STATE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = files
        self.ttl_s = ttl_s
        self.clock = clock
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._states)

    def step(
        self,
        key: str,
        ids: Sequence[int],
        request: str | None = None,
        prompt_tokens: int = 0,
        final: bool = False,
        reason: str | None = None,
    ) -> Step:
        """Feed `ids` to the key's stream (created from `request` on the first call)."""
        state = self._state(key, request, prompt_tokens)
        chunks = state.stream.feed(list(ids))
        if final:
            chunks.append(state.stream.finish(reason or None))
            with self._lock:
                self._states.pop(key, None)
        return Step(chunks, state.stream.done)

    def _state(self, key: str, request: str | None, prompt_tokens: int) -> _State:
        now = self.clock()
        with self._lock:
            for stale in [k for k, s in self._states.items() if now - s.touched > self.ttl_s]:
                del self._states[stale]
            state = self._states.get(key)
            if state is None:
                if request is None:
                    raise RequestRejected(
                        f"request_key {key!r}: unknown (its first call must carry `request`; "
                        f"states idle for {self.ttl_s:g} s are dropped)",
                        "request_key",
                    )
                stream = DeltaStream(self.files, post_request(request), prompt_tokens)
                state = self._states[key] = _State(stream, now)
            state.touched = now
            return state


def step_arrays(step: Step) -> dict[str, NDArray[Any]]:
    """The postprocessing outputs (spec.POST_OUTPUTS): one value per chunk, and `done`."""
    columns = [chunk_to_outputs(c) for c in step.chunks]
    out = {
        f.name: np.array([col[f.name][0] for col in columns], dtype=NUMPY_TYPES[f.triton_type])
        for f in CHAT_OUTPUTS
    }
    out["done"] = np.array([step.done], dtype=np.bool_)
    return out


def step_inputs(arrays: Mapping[str, NDArray[Any]]) -> dict[str, Any]:
    """DeltaStates.step keyword arguments from postprocessing's input tensors."""
    return {
        "key": scalar(arrays, "request_key"),
        "ids": [int(i) for i in np.asarray(arrays.get("output_ids", [])).reshape(-1)],
        "request": scalar(arrays, "request") if "request" in arrays else None,
        "prompt_tokens": int(scalar(arrays, "prompt_tokens")) if "prompt_tokens" in arrays else 0,
        "final": bool(scalar(arrays, "final")) if "final" in arrays else False,
        "reason": scalar(arrays, "finish_reason") if "finish_reason" in arrays else None,
    }


class PostprocessingModel(TritonModel):
    """One instance (see spec.postprocessing_config); one response per call."""

    def setup(self) -> None:
        ttl = float(self.param(P_STATE_TTL, str(STATE_TTL_S)))
        self.states = DeltaStates(self.model_files(), ttl)
        self.names = [t.name for t in POST_INPUTS]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Triton's entry point."""
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        try:
            step = self.states.step(**step_inputs(self.inputs(request, self.names)))
            return self.response(step_arrays(step))
        except RequestRejected as exc:
            return self.error(rejection_message(exc))
        except Exception as exc:
            return self.error(f"postprocessing failed: {type(exc).__name__}: {exc}")
