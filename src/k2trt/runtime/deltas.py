"""Ids an engine generated -> `ChatChunk` deltas: the output half of a chat turn.

`DeltaStream` runs the incremental detokenizer, then stop strings, then the tool-call parser
(the two pieces `OutputStream` combines, with the stop-string cut between them, so a stop
string ends the raw output the way the model wrote it, markers included). The prompt half is
`k2trt.runtime.chat`.

Ending a turn: a stop id (`<|im_end|>`, `[EOS]`, generation_config's) is counted in
`completion_tokens` but never becomes content; a stop string (`request.stop`) cuts the output
before the match (the stop string that ends first, however the text arrived), text that
could be the start of one is held back until it cannot. Either sets `DeltaStream.done`, and
ids fed after it are ignored. The final chunk carries whatever was still held back (content
and tool-call deltas both, in the rare case there are both: content first), finish_reason
("tool_calls" whenever a call was kept, "length" when max_tokens cut one), usage, and
`stop_sequence`: the stop string that matched, as the request spelled it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from k2trt.chat.toolcalls import (
    ContentDelta,
    Event,
    ToolCallParser,
    ToolCallStart,
    to_openai_stream_deltas,
)
from k2trt.runtime.chat import ModelFiles, prefill_text
from k2trt.runtime.types import ChatChunk, ChatRequest


def first_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """(where it starts, which) of the stop string that ends first in `text`, or None.

    The one that ends first is what a token-by-token reader meets first, so the answer does
    not depend on how the text was cut into pieces; of two ending at once, the longer wins.

    >>> first_stop("abcdef", ("bcde", "cd")), first_stop("abc", ("x",))
    ((2, 'cd'), None)
    """
    found = [(i + len(s), i, s) for s in stops if s and (i := text.find(s)) >= 0]
    if not found:
        return None
    _, start, stop = min(found)
    return start, stop


class StopStrings:
    """Cuts streamed text at the first stop string; holds back a tail that may start one.

    `matched` is the stop string that matched (None until one does).

    >>> s = StopStrings(("END",))
    >>> s.feed("abc E"), s.feed("ND tail"), s.matched
    ('abc ', '', 'END')
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Text that is safe to release now."""
        if self.matched is not None:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        hit = first_stop(buf, self.stops)
        if hit is not None:
            cut, self.matched = hit
            self._held = ""
            return buf[:cut]
        keep = self._partial_tail(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """End of text: a held tail never became a stop string."""
        held, self._held = self._held, ""
        return held

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of a stop string."""
        longest = max(len(s) for s in self.stops) - 1
        for k in range(min(longest, len(buf)), 0, -1):
            tail = buf[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0


class _PlainParser:
    """tool_choice "none": everything is content (marker ids are dropped before decoding)."""

    def feed(self, text: str) -> list[Event]:
        return [ContentDelta(text)] if text else []

    def finish(self) -> list[Event]:
        return []

    def has_calls(self) -> bool:
        return False


class _ToolParser:
    def __init__(self, tools: Sequence[Mapping[str, Any]] | None) -> None:
        self.parser = ToolCallParser(tools)

    def feed(self, text: str) -> list[Event]:
        return self.parser.feed(text)

    def finish(self) -> list[Event]:
        return self.parser.finish()

    def has_calls(self) -> bool:
        return bool(self.parser.result().tool_calls)

    def cut_call(self) -> bool:
        """A call is still open (its end marker never came)."""
        return any(not c.complete for c in self.parser.result().tool_calls)


def _chunks(events: Sequence[Event]) -> list[ChatChunk]:
    """Deltas in order: consecutive content merged; consecutive tool-call deltas share a chunk.

    A chunk never holds both, so a client reading content before tool_calls keeps the order.
    """
    chunks: list[ChatChunk] = []
    for delta in to_openai_stream_deltas(events):
        last = chunks[-1] if chunks else None
        if "content" in delta:
            if last is not None and not last.tool_calls:
                last.content += delta["content"]
            else:
                chunks.append(ChatChunk(content=delta["content"]))
        elif last is not None and last.tool_calls:
            last.tool_calls.extend(delta["tool_calls"])
        else:
            chunks.append(ChatChunk(tool_calls=list(delta["tool_calls"])))
    return chunks


class DeltaStream:
    """Per-request output state: generated ids -> ChatChunk deltas (never cumulative).

    >>> out = DeltaStream(files, request, prompt_tokens=12)  # doctest: +SKIP
    >>> chunks = out.feed(ids)            # content / tool_call deltas  # doctest: +SKIP
    >>> last = out.finish("length")       # finish_reason + usage  # doctest: +SKIP
    """

    def __init__(self, files: ModelFiles, request: ChatRequest, prompt_tokens: int = 0) -> None:
        tok = files.tokenizer
        self._decoder = tok.incremental_decoder(skip_special_tokens=True)
        self._stop_ids = frozenset(files.stop_token_ids)
        self._stops = StopStrings(request.stop)
        self._prompt_tokens = prompt_tokens
        self._stopped_by_id = False
        self.completion_tokens = 0
        self._pending: list[Event] = []
        self._parser: _PlainParser | _ToolParser
        if request.tool_choice == "none":
            self._parser = _PlainParser()
            self._drop_ids = frozenset(tok.tool_marker_ids.values())
        else:
            self._parser = _ToolParser(request.tools)
            self._drop_ids = frozenset()
            # The forced start of the turn is in the prompt, not in the output: the parser reads
            # it silently, except for the call start a named choice opens (clients need its id).
            prefill = prefill_text(request)
            self._pending = [e for e in self._parser.feed(prefill) if isinstance(e, ToolCallStart)]

    def _cut_by_length(self) -> bool:
        # max_tokens ran out inside a call: "length", as OpenAI reports a cut tool call (the
        # partial call is still returned, flagged incomplete).
        return not self.done and isinstance(self._parser, _ToolParser) and self._parser.cut_call()

    @property
    def done(self) -> bool:
        """A stop string matched or a stop id came: the caller should stop generating."""
        return self._stopped_by_id or self._stops.matched is not None

    def feed(self, ids: Sequence[int]) -> list[ChatChunk]:
        """Chunks for newly generated ids (no finish_reason); ids after `done` are ignored."""
        events, self._pending = self._pending, []
        if self.done:
            return _chunks(events)
        kept: list[int] = []
        for token in ids:
            self.completion_tokens += 1
            if token in self._stop_ids:
                self._stopped_by_id = True
                break
            if token not in self._drop_ids:
                kept.append(token)
        text = self._decoder.feed(kept) if kept else ""
        events += self._parser.feed(self._stops.feed(text)) if text else []
        chunks = _chunks(events)
        for chunk in chunks:  # known from the start: Anthropic's message_start reports it
            chunk.prompt_tokens = self._prompt_tokens
        return chunks

    def finish(self, reason: str | None = None) -> ChatChunk:
        """The last chunk: whatever was held back, finish_reason and usage.

        finish_reason is "tool_calls" when a call was kept (unless max_tokens ran out inside
        a call: then "length", as OpenAI reports it), else `reason` (the caller says "length"
        when max_tokens ran out) unless a stop id or stop string ended the turn, else "stop".
        `stop_sequence` names the stop string that ended the turn, if one did.
        """
        events, self._pending = self._pending, []
        if self._stops.matched is None:
            tail = self._stops.feed(self._decoder.flush()) + self._stops.flush()
            events += self._parser.feed(tail) if tail else []
        events += self._parser.finish()
        chunks = _chunks(events)
        last = ChatChunk(
            content="".join(c.content for c in chunks),
            tool_calls=[d for c in chunks for d in c.tool_calls],
        )
        if self._parser.has_calls() and not (reason == "length" and self._cut_by_length()):
            last.finish_reason = "tool_calls"
        elif self.done or reason is None:
            last.finish_reason = "stop"
        else:
            last.finish_reason = reason
        last.prompt_tokens = self._prompt_tokens
        last.completion_tokens = self.completion_tokens
        last.stop_sequence = self._stops.matched
        return last
