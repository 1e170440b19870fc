"""`preprocessing`: the chat model's inputs -> prompt ids and sampling tensors.

The prompt comes from `k2trt.runtime.chat.prepare`: the checkpoint's chat template, the
template's markers as special ids and user text never, no BOS added on top of the template's,
stop ids from generation_config.json. `request` carries what postprocessing needs (tools,
tool_choice, stop) as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from k2trt.chat.grammar_engine import MaskFactory, ToolGrammar
from k2trt.runtime.chat import ModelFiles, Prepared, prepare
from k2trt.runtime.constrain import DEFAULT_MODE, constrain, grammar_for
from k2trt.runtime.types import ChatRequest, RequestRejected
from k2trt.runtime.wire import CHAT_INPUTS, inputs_to_request, rejection_message, strings
from k2trt.triton_repo.serving.common import TritonModel
from k2trt.triton_repo.spec import P_TOOL_GRAMMAR

UINT64_MAX = (1 << 64) - 1


def post_request_json(req: ChatRequest) -> str:
    """The part of a request that postprocessing needs, as JSON text."""
    return json.dumps(
        {"tools": req.tools, "tool_choice": req.tool_choice, "stop": list(req.stop)},
        ensure_ascii=False,
        sort_keys=True,
    )


def post_request(text: str) -> ChatRequest:
    """The ChatRequest postprocessing rebuilds from `post_request_json` (no messages)."""
    data = json.loads(text)
    return ChatRequest(
        messages=[], tools=data["tools"], tool_choice=data["tool_choice"], stop=tuple(data["stop"])
    )


def preprocess(
    files: ModelFiles, arrays: Mapping[str, NDArray[Any]], grammar: ToolGrammar | None = None
) -> dict[str, NDArray[Any]]:
    """Output tensors for one request's input tensors; RequestRejected names a bad field.
    With `grammar`, a constrained request's tool-call grammar is compiled here (so a bad
    schema is this request's 400) and its structural tag goes out as `guide`.

    >>> out = preprocess(files, request_to_inputs(ChatRequest([{"role": "user", "content": "hi"}])))
    ... # doctest: +SKIP
    """
    req = inputs_to_request(arrays)
    if req.seed is not None and not 0 <= req.seed <= UINT64_MAX:
        raise RequestRejected(f"seed must be in 0..2**64-1, got {req.seed}", "seed")
    prepared = constrain(prepare(files, req), req, grammar)
    return prepared_arrays(prepared, req)


def prepared_arrays(prepared: Prepared, req: ChatRequest) -> dict[str, NDArray[Any]]:
    """The preprocessing outputs (spec.PRE_OUTPUTS) of a prepared request."""
    sampling = prepared.sampling
    seed = [] if sampling.seed is None else [sampling.seed]
    constraint = sampling.constraint
    assert constraint is None or isinstance(constraint, MaskFactory)
    return {
        "input_ids": np.array(prepared.prompt_ids, dtype=np.int32),
        "max_tokens": np.array([sampling.max_tokens], dtype=np.int32),
        "temperature": np.array([sampling.temperature], dtype=np.float32),
        "top_p": np.array([sampling.top_p], dtype=np.float32),
        "seed": np.array(seed, dtype=np.uint64),
        "stop_token_ids": np.array(sampling.stop_token_ids, dtype=np.int32),
        "stop_words": strings(req.stop),
        "prompt_tokens": np.array([len(prepared.prompt_ids)], dtype=np.int32),
        "request": strings([post_request_json(req)]),
        "guide": strings([] if constraint is None else [constraint.spec.tag]),
    }


class PreprocessingModel(TritonModel):
    """Stateless: one response per request, an error response naming a rejected field."""

    def setup(self) -> None:
        self.files = self.model_files()
        self.names = [f.name for f in CHAT_INPUTS]
        self.grammar = grammar_for(self.files, self.param(P_TOOL_GRAMMAR, DEFAULT_MODE))

    def execute(self, requests: list[Any]) -> list[Any]:
        """Triton's entry point."""
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        try:
            arrays = self.inputs(request, self.names)
            return self.response(preprocess(self.files, arrays, self.grammar))
        except RequestRejected as exc:
            return self.error(rejection_message(exc))
        except Exception as exc:  # anything else fails this request only, with its reason
            return self.error(f"preprocessing failed: {type(exc).__name__}: {exc}")
