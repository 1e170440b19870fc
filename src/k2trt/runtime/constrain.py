"""Attach a request's tool-call grammar to its sampling parameters (every engine path).

`constrain` is the one place a prepared request gains its constraint: the local backend calls
it after `prepare`, the Triton `chat` model before handing ids to `tensorrt_llm`. A schema the
grammar cannot use becomes RequestRejected (HTTP 400) naming the tool.
"""

from __future__ import annotations

import os
from dataclasses import replace

from k2trt.chat.grammar import SchemaRejected, check_mode
from k2trt.chat.grammar_engine import ToolGrammar
from k2trt.runtime.chat import ModelFiles, Prepared
from k2trt.runtime.types import ChatRequest, RequestRejected

MODE_ENV = "K2TRT_TOOL_GRAMMAR"  # `k2trt serve --tool-grammar` sets it (workers inherit it)
DEFAULT_MODE = "auto"


def mode_from_env() -> str:
    """$K2TRT_TOOL_GRAMMAR (off | auto | strict), "auto" when unset.

    >>> mode_from_env() in ("off", "auto", "strict")
    True
    """
    return check_mode(os.environ.get(MODE_ENV, DEFAULT_MODE) or DEFAULT_MODE)


def grammar_for(files: ModelFiles, mode: str | None = None) -> ToolGrammar | None:
    """The tool grammar of a model under `mode` (default: the environment's); None if off."""
    mode = check_mode(mode) if mode is not None else mode_from_env()
    if mode == "off":
        return None
    return ToolGrammar(files.tokenizer, files.stop_token_ids, mode)


def constrain(prepared: Prepared, request: ChatRequest, grammar: ToolGrammar | None) -> Prepared:
    """`prepared` with the request's compiled grammar in its sampling (unchanged if none).

    >>> constrain(prepared, request, None) is prepared  # doctest: +SKIP
    True
    """
    if grammar is None:
        return prepared
    try:
        factory = grammar.factory(request.tools, request.tool_choice)
    except SchemaRejected as exc:
        raise RequestRejected(str(exc), exc.field) from None
    if factory is None:
        return prepared
    return replace(prepared, sampling=replace(prepared.sampling, constraint=factory))
