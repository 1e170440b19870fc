"""The scripting hook: an engine that plays back fixed replies, for tests and demos.

A tiny random model never calls a tool, so anything that must show a tool call end to end
(tests, `k2trt demo`, a gateway smoke test) scripts the generations instead. A script is a
JSON file::

    {"replies": ["Hello!", "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>"],
     "delay_s": 0}

Each `generate()` call plays the next reply, markers included (encoded as their special ids),
one id at a time, then the first stop id of the sampling parameters, so the turn ends like a
real model's. Once the replies run out, the fallback engine generates (or RuntimeError).

The reply is played as-is whatever the prompt: when tool_choice forces a call, the prompt
already ends with the forced opening (see `k2trt.runtime.chat`), so a script for a named
choice holds just the arguments and the closing markers
(`{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>`), and one for "required" starts
at `<|tool_call_begin|>`.
"""  # noqa: E501

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from k2trt.chat.tokenizer import KimiTokenizer
from k2trt.errors import K2Error
from k2trt.fsutil import read_json
from k2trt.runtime.types import Engine, SamplingParams, never

SCRIPT_ENV = "K2TRT_SCRIPT"  # path of a script file; engines built by engine_for() honour it


class ScriptedEngine:
    """Plays `replies` in order, one per `generate()` call (thread-safe).

    >>> engine = ScriptedEngine(tok, ["Hi!"])  # doctest: +SKIP
    >>> tok.decode(list(engine.generate([1], SamplingParams(max_tokens=8))))  # doctest: +SKIP
    'Hi!'
    """

    def __init__(
        self,
        tokenizer: KimiTokenizer,
        replies: Sequence[str],
        fallback: Engine | None = None,
        delay_s: float = 0.0,
    ) -> None:
        if isinstance(replies, str) or not all(isinstance(r, str) for r in replies):
            raise K2Error("replies must be a list of strings")
        if not (isinstance(delay_s, (int, float)) and 0 <= delay_s <= 60):
            raise K2Error(f"delay_s must be a number of seconds in 0..60, got {delay_s!r}")
        self._replies = [tokenizer.encode_with_specials(r) for r in replies]
        self._fallback = fallback
        self._delay_s = float(delay_s)
        self._next = 0
        self._lock = threading.Lock()

    @classmethod
    def from_file(
        cls, path: str | Path, tokenizer: KimiTokenizer, fallback: Engine | None = None
    ) -> ScriptedEngine:
        """Load a script: `{"replies": ["text", ...], "delay_s": 0}` (delay_s optional)."""
        path = Path(path)
        data = read_json(path, "script")
        if not isinstance(data, dict):
            raise K2Error('script must be a JSON object {"replies": [...]}', path=path)
        unknown = sorted(set(data) - {"replies", "delay_s"})
        if unknown:
            raise K2Error(f"unknown field {unknown[0]!r} (expected replies, delay_s)", path=path)
        replies = data.get("replies")
        if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
            raise K2Error("replies: expected a list of strings", path=path)
        delay = data.get("delay_s", 0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 60:
            raise K2Error(f"delay_s: expected seconds in 0..60, got {delay!r}", path=path)
        return cls(tokenizer, replies, fallback, delay)

    @property
    def remaining(self) -> int:
        """Replies not played yet."""
        with self._lock:
            return len(self._replies) - self._next

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] = never,
    ) -> Iterator[int]:
        """The next reply's ids, then the first stop id (the reply is taken at call time)."""
        with self._lock:
            index = self._next
            if index < len(self._replies):
                self._next += 1
        if index < len(self._replies):
            ids = self._replies[index] + list(params.stop_token_ids[:1])
            return self._play(ids, params.max_tokens, cancelled)
        if self._fallback is None:
            raise RuntimeError(f"scripted engine: all {len(self._replies)} replies were played")
        return self._fallback.generate(prompt_ids, params, cancelled)

    def _play(
        self, ids: list[int], max_tokens: int, cancelled: Callable[[], bool]
    ) -> Iterator[int]:
        for token in ids[:max_tokens]:
            if self._delay_s:
                time.sleep(self._delay_s)
            if cancelled():
                return
            yield token


def script_from_env(tokenizer: KimiTokenizer, fallback: Engine) -> Engine:
    """`fallback` wrapped in the script named by $K2TRT_SCRIPT, or `fallback` when unset."""
    path = os.environ.get(SCRIPT_ENV)
    if not path:
        return fallback
    return ScriptedEngine.from_file(path, tokenizer, fallback)
