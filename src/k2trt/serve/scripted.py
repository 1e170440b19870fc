"""A zero-cost `ChatBackend` that plays pre-made replies: gateway tests and benchmarks.

Replies are Kimi-format model output (tool-call markers included). Each is cut into
"tokens" once, at construction (markers whole, other text every `chars_per_token`
characters), and run through the real tool-call parser into `ChatChunk`s, so a request costs
no model and almost no work: the chunks are replayed. Request n plays reply n mod len.

It records what it was asked (`requests`) and when a stream was closed before its end
(`cancelled`, monotonic times), and can be made slow (`delay_s` before every chunk),
not ready (`is_ready`), or down (`fail`), which is what the robustness tests need. The
model-backed equivalent is `k2trt.runtime.local.LocalBackend` with $K2TRT_SCRIPT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from k2trt.chat.toolcalls import MARKERS, ToolCallParser, to_openai_stream_deltas
from k2trt.runtime.deltas import first_stop
from k2trt.runtime.types import BackendUnavailable, ChatChunk, ChatRequest, RequestRejected

_MARKER_SPLIT = re.compile("(" + "|".join(re.escape(m) for m in MARKERS) + ")")


def split_tokens(text: str, chars_per_token: int = 4) -> list[str]:
    """Pseudo-tokens: each marker whole, other text in pieces of `chars_per_token` characters.

    >>> split_tokens("Hello there<|tool_calls_section_begin|>", 4)
    ['Hell', 'o th', 'ere', '<|tool_calls_section_begin|>']
    """
    tokens: list[str] = []
    for piece in _MARKER_SPLIT.split(text):
        if piece in MARKERS:
            tokens.append(piece)
        else:
            tokens += [
                piece[i : i + chars_per_token] for i in range(0, len(piece), chars_per_token)
            ]
    return tokens


def reply_chunks(text: str, chars_per_token: int = 4) -> list[ChatChunk]:
    """One chunk per pseudo-token (empty for tokens that only advance the parser), then a
    last chunk with finish_reason and completion_tokens (prompt_tokens: 0, set per request)."""
    parser = ToolCallParser()
    chunks = []
    for token in split_tokens(text, chars_per_token):
        chunks.append(_chunk(to_openai_stream_deltas(parser.feed(token))))
    last = _chunk(to_openai_stream_deltas(parser.finish()))
    last.finish_reason = "tool_calls" if parser.result().tool_calls else "stop"
    last.completion_tokens = len(chunks) + 1  # + the end-of-turn token
    return [*chunks, last]


def _chunk(deltas: list[dict[str, object]]) -> ChatChunk:
    chunk = ChatChunk()
    for delta in deltas:
        if "content" in delta:
            chunk.content += str(delta["content"])
        else:
            chunk.tool_calls += delta["tool_calls"]  # type: ignore[arg-type]
    return chunk


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """About four characters a token over the messages and tools as JSON (no tokenizer)."""
    size = len(json.dumps(request.messages)) + (
        len(json.dumps(request.tools)) if request.tools else 0
    )
    return max(1, size // 4)


class ScriptedBackend:
    """Replays `replies`; see the module docstring.

    >>> backend = ScriptedBackend(["Hi!"])
    >>> request = ChatRequest([{"role": "user", "content": "x"}])
    >>> async def run():
    ...     return [c async for c in backend.stream(request)]
    >>> [(c.content, c.finish_reason) for c in asyncio.run(run())]
    [('Hi!', None), ('', 'stop')]
    """

    def __init__(
        self,
        replies: Sequence[str] = ("Hello from k2trt.",),
        delay_s: float = 0.0,
        model_id: str = "k2trt-scripted",
        max_context: int = 131072,
        chars_per_token: int = 4,
    ) -> None:
        if not replies:
            raise ValueError("ScriptedBackend needs at least one reply")
        self.model_id = model_id
        self.max_context = max_context
        self.delay_s = delay_s
        self.is_ready = True
        self.fail: Exception | None = None  # raised by stream(), e.g. BackendUnavailable
        self.requests: deque[ChatRequest] = deque(maxlen=256)
        self.cancelled: list[float] = []
        self.closed = False
        self._replies = list(replies)
        self._chars = chars_per_token
        self._plans = [reply_chunks(r, chars_per_token) for r in replies]
        self._count = 0

    async def ready(self) -> bool:
        return self.is_ready and not self.closed

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """The next reply's chunks (RequestRejected here when the prompt exceeds the context)."""
        if self.fail is not None:
            raise self.fail
        if self.closed:
            raise BackendUnavailable(f"{self.model_id}: backend is closed")
        prompt = estimate_prompt_tokens(request)
        if prompt >= self.max_context:
            raise RequestRejected(
                f"the prompt is about {prompt} tokens; {self.model_id} has a context of "
                f"{self.max_context} tokens",
                "messages",
            )
        self.requests.append(request)
        index, self._count = self._count % len(self._plans), self._count + 1
        return self._play(self._plan(index, request), prompt)

    def _plan(self, index: int, request: ChatRequest) -> list[ChatChunk]:
        plan = self._plans[index]
        hit = first_stop(self._replies[index], request.stop)
        if hit is not None:  # cut where the model's output would be, and say which stop
            plan = reply_chunks(self._replies[index][: hit[0]], self._chars)
            plan[-1].stop_sequence = hit[1]
        if request.max_tokens is not None and request.max_tokens < len(plan):
            kept = [ChatChunk(c.content, list(c.tool_calls)) for c in plan[: request.max_tokens]]
            kept[-1].finish_reason = "length"
            kept[-1].completion_tokens = request.max_tokens
            return kept
        return plan

    async def _play(self, plan: list[ChatChunk], prompt_tokens: int) -> AsyncIterator[ChatChunk]:
        finished = False
        try:
            for i, chunk in enumerate(plan[:-1]):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                # The prompt's size is known before the first token: say it on the first chunk.
                yield dataclasses.replace(chunk, prompt_tokens=prompt_tokens) if i == 0 else chunk
            last = plan[-1]
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield dataclasses.replace(last, prompt_tokens=prompt_tokens)
            finished = True
        finally:
            if not finished:
                self.cancelled.append(time.monotonic())

    async def close(self) -> None:
        self.closed = True
