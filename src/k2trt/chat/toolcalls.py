"""Kimi K2 tool-call parser: one incremental state machine for streamed and whole outputs.

Kimi K2 writes tool calls between special-token markers after any plain text::

    Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0
    <|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|><|tool_calls_section_end|>

`ToolCallParser.feed` takes detokenized text in pieces of any size and returns events at once;
a non-streaming parse (`parse_tool_calls`) is one big `feed` then `finish`, so streamed and
whole results are the same by construction. Rules, stated once (where upstream parsers agree,
we follow them; tests/test_toolcalls_upstream.py holds their cases and our differences):

- content is the text outside tool-call sections, verbatim: before the section and after its
  end. Text inside a section but outside any call is dropped; when it is not whitespace, the
  drop is noted in `errors` (every upstream parser drops it; vLLM's tests came from leaks of
  such noise into content).
- markers never reach content, ids, names or arguments. A delta ending in a possible marker
  prefix (`<`, `<|tool_ca`) holds back only that tail; once it proves not to be a marker it is
  released. At `finish` the held tail is literal text (markers are single special tokens, so
  a partial marker is never a cut-off one) and goes where the text around it goes.
- removing a marker never joins the text around it into a marker string (`SeamGuard`): the
  completing text is dropped and noted.
- the singular `<|tool_call_section_begin|>` / `_end|>` variants count as section markers;
  `<|tool_call_begin|>` outside a section opens a call that ends back in content (noted).
- a call's id is the text between `<|tool_call_begin|>` and `<|tool_call_argument_begin|>`,
  stripped of surrounding whitespace. `functions.NAME:IDX` names NAME. `NAME:IDX` (as vLLM,
  SGLang and TensorRT-LLM accept) is kept as a call to NAME and noted; any other id is no call:
  the call is dropped and noted (as every upstream parser and Moonshot's extractor do).
- arguments stream as they arrive, with leading and trailing whitespace removed (trailing
  whitespace is held back until more non-space text follows); JSON is checked once, at the end.
- a call cut off by a new call, a section end, or the end of output is reported with
  `complete=False`, never lost. Markers that make no sense where they appear are dropped and
  noted in `errors`.
- `tools=None` means nothing is checked: every call counts as declared.

Each feed costs O(len(delta)) amortized: the held-back tails are shorter than the longest
marker, accumulated text is kept as lists of pieces, joined once, and dropped text is not kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, TypeAlias

from k2trt.chat.toolcall_text import MARKERS as MARKERS
from k2trt.chat.toolcall_text import (
    MAX_MARKER,
    PREFIXES,
    SeamGuard,
    parse_call_id,
    preview,
)
from k2trt.errors import K2Error

# Bumped whenever the parser's output for some input changes: releases record it, and their
# notes say when it moved (a served answer can change with it).
PARSER_VERSION = "kimi-toolcalls/2"

UndeclaredPolicy = Literal["keep", "drop", "error"]


class _Kind(Enum):
    SECTION_BEGIN = "section_begin"
    SECTION_END = "section_end"
    CALL_BEGIN = "call_begin"
    ARG_BEGIN = "argument_begin"
    CALL_END = "call_end"


class _State(Enum):
    CONTENT = "content"  # outside any section
    SECTION = "section"  # inside a section, between calls
    CALL_ID = "call_id"  # after <|tool_call_begin|>, reading the id
    ARGS = "args"  # after <|tool_call_argument_begin|>, streaming arguments


_MARKER_KINDS: dict[str, _Kind] = {
    "<|tool_calls_section_begin|>": _Kind.SECTION_BEGIN,
    "<|tool_call_section_begin|>": _Kind.SECTION_BEGIN,  # singular variant seen in the wild
    "<|tool_calls_section_end|>": _Kind.SECTION_END,
    "<|tool_call_section_end|>": _Kind.SECTION_END,
    "<|tool_call_begin|>": _Kind.CALL_BEGIN,
    "<|tool_call_argument_begin|>": _Kind.ARG_BEGIN,
    "<|tool_call_end|>": _Kind.CALL_END,
}
_MAX_ID = 256  # longer ids are no ids: the rest is not kept
_GAP_PREVIEW = 60  # how much dropped section text an error quotes (the rest is not kept)


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """Plain text for the assistant message's `content`."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A call's id is known (its arguments follow as `ToolCallArgumentsDelta`)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgumentsDelta:
    """The next piece of call `index`'s raw argument text."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDone:
    """Call `index` ended; `complete` is False when its end marker never came."""

    index: int
    complete: bool
    valid_json: bool
    declared: bool


Event: TypeAlias = ContentDelta | ToolCallStart | ToolCallArgumentsDelta | ToolCallDone


@dataclass(frozen=True)
class ToolCall:
    """One parsed call. `index` counts kept calls from 0; `id` is as the model wrote it."""

    index: int
    id: str
    name: str
    arguments: str
    complete: bool
    valid_json: bool
    declared: bool


@dataclass(frozen=True)
class ParsedOutput:
    """What one model output amounts to."""

    content: str
    tool_calls: list[ToolCall]
    finish_reason_hint: str | None  # "tool_calls" when any call was kept
    errors: list[str]


@dataclass
class _Call:
    index: int
    id: str
    name: str
    declared: bool
    pieces: list[str] = field(default_factory=list)
    held_ws: list[str] = field(default_factory=list)  # trailing whitespace not yet released
    guard: SeamGuard = field(default_factory=SeamGuard)
    started: bool = False  # first non-space argument text seen
    complete: bool = False
    valid_json: bool = False


def declared_function(tool: Any) -> tuple[Mapping[str, Any], str] | None:
    """A declared tool's function and its name (OpenAI `{"type": "function", "function":
    {...}}` or the function bare), or None when it has no non-empty string name.

    >>> declared_function({"type": "function", "function": {"name": "f"}})
    ({'name': 'f'}, 'f')
    """
    fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(name, str) or not name:
        return None
    return fn, name


def _tool_names(tools: Sequence[Mapping[str, Any]] | None) -> frozenset[str] | None:
    if tools is None:
        return None
    names = set()
    for i, tool in enumerate(tools):
        found = declared_function(tool)
        if found is None:
            raise K2Error(f"tools[{i}] has no function name")
        names.add(found[1])
    return frozenset(names)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return False
    return True


class ToolCallParser:
    """Incremental Kimi K2 tool-call parser; `feed` deltas, then `finish`, then `result`.

    >>> p = ToolCallParser()
    >>> ev = p.feed('Hi<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0')
    >>> ev += p.feed('<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>')
    >>> ev += p.finish()
    >>> [c.name for c in p.result().tool_calls], p.result().content
    (['f'], 'Hi')
    """

    def __init__(
        self,
        tools: Sequence[Mapping[str, Any]] | None = None,
        undeclared: UndeclaredPolicy = "keep",
    ) -> None:
        if undeclared not in ("keep", "drop", "error"):
            raise K2Error(f"undeclared must be keep, drop or error, not {undeclared!r}")
        self._declared_names = _tool_names(tools)
        self._policy = undeclared
        self._state = _State.CONTENT
        self._tail = ""  # a possible marker prefix held back from the last delta
        self._out: list[Event] = []  # events of the feed in progress
        self._content: list[str] = []
        self._content_guard = SeamGuard()
        self._gap = ""  # the start of non-space section text between calls (it is dropped)
        self._id: list[str] = []
        self._id_len = 0
        self._call: _Call | None = None  # the open call, if kept
        self._implicit = False  # the open call began outside a section: none to return to
        self._calls: list[_Call] = []
        self._errors: list[str] = []
        self._finished = False

    def feed(self, delta: str) -> list[Event]:
        """Parse the next piece of model output; the events it completes, in order.

        >>> ToolCallParser().feed("Hello <|tool_ca")
        [ContentDelta(text='Hello ')]
        """
        if self._finished:
            raise K2Error("tool-call parser: feed() after finish()")
        self._out = []
        buf = self._tail + delta if self._tail else delta
        self._tail = ""
        self._scan(buf)
        return self._out

    def finish(self) -> list[Event]:
        """End of generation: the held tail is literal text; open calls close as incomplete.

        >>> ToolCallParser().finish()
        []
        """
        if self._finished:
            return []
        self._out = []
        tail, self._tail = self._tail, ""
        self._route(tail)  # a partial marker is text: markers are single tokens
        if self._state in (_State.CALL_ID, _State.ARGS):
            self._close_open("output ended inside it")
        if self._state is _State.SECTION:
            self._end_gap()
            self._errors.append("tool-call section not closed")
        self._state = _State.CONTENT
        if held := self._content_guard.flush():
            self._add_content(held)
        self._finished = True
        return self._out

    def result(self) -> ParsedOutput:
        """Everything parsed so far; final after `finish()` (an open call shows as incomplete).

        >>> ToolCallParser().result().content
        ''
        """
        calls = [
            ToolCall(c.index, c.id, c.name, "".join(c.pieces), c.complete, c.valid_json, c.declared)
            for c in self._calls
        ]
        hint = "tool_calls" if calls else None
        return ParsedOutput("".join(self._content), calls, hint, list(self._errors))

    # -- scanning ---------------------------------------------------------------------------

    def _scan(self, buf: str) -> None:
        """Route `buf` to the current state's sink, acting on markers; hold a prefix tail."""
        pos = 0  # start of text not yet routed
        search = 0  # where to look for the next "<|"
        n = len(buf)
        while True:
            j = buf.find("<|", search)
            if j < 0:
                end = n - 1 if buf.endswith("<") else n  # a lone "<" may start a marker
                self._route(buf[pos:end])
                self._tail = buf[end:]
                return
            k = buf.find("|>", j + 2, j + MAX_MARKER)
            kind = _MARKER_KINDS.get(buf[j : k + 2]) if k >= 0 else None
            if kind is not None:
                self._route(buf[pos:j])
                self._marker(kind)
                pos = search = k + 2
            elif k < 0 and n - j < MAX_MARKER and buf[j:] in PREFIXES:
                self._route(buf[pos:j])
                self._tail = buf[j:]
                return
            else:
                search = j + 1  # "<|" that is not a marker: plain text

    def _route(self, text: str) -> None:
        if not text:
            return
        state = self._state
        if state is _State.CONTENT:
            self._emit_content(text)
        elif state is _State.SECTION:
            if len(self._gap) <= _GAP_PREVIEW and (self._gap or not text.isspace()):
                piece = text if self._gap else text.lstrip()
                self._gap += piece[: _GAP_PREVIEW + 1 - len(self._gap)]
        elif state is _State.CALL_ID:
            if self._id_len <= _MAX_ID:
                self._id.append(text[: _MAX_ID + 1 - self._id_len])
            self._id_len += len(text)
        elif self._call is not None:
            self._args_text(self._call, text)

    def _emit_content(self, text: str) -> None:
        safe, formed = self._content_guard.push(text)
        self._note_formed(formed)
        if safe:
            self._add_content(safe)

    def _add_content(self, text: str) -> None:
        self._content.append(text)
        self._out.append(ContentDelta(text))

    def _note_formed(self, formed: list[str]) -> None:
        for marker in formed:
            self._errors.append(f"text around removed markers formed {marker!r}; dropped")

    def _args_text(self, call: _Call, text: str) -> None:
        """Append argument text, stripping outer whitespace without looking back."""
        if not call.started:
            text = text.lstrip()
            if not text:
                return
            call.started = True
        stripped = text.rstrip()
        if not stripped:
            call.held_ws.append(text)
            return
        body = "".join(call.held_ws) + stripped if call.held_ws else stripped
        call.held_ws = [text[len(stripped) :]] if len(stripped) < len(text) else []
        safe, formed = call.guard.push(body)
        self._note_formed(formed)
        self._add_args(call, safe)

    def _add_args(self, call: _Call, text: str) -> None:
        if text:
            call.pieces.append(text)
            self._out.append(ToolCallArgumentsDelta(call.index, text))

    def _end_gap(self) -> None:
        if self._gap:
            self._errors.append(
                "text outside any call in a tool-call section dropped: "
                + preview(self._gap, _GAP_PREVIEW)
            )
        self._gap = ""

    # -- markers ----------------------------------------------------------------------------

    def _marker(self, kind: _Kind) -> None:
        state = self._state
        self._content_guard.seam()  # the marker is removed: text around it must not join
        if self._call is not None:
            self._call.guard.seam()
        in_call = state in (_State.CALL_ID, _State.ARGS)
        if kind is _Kind.CALL_BEGIN:
            if in_call:
                self._close_open("a new call began first")
            if self._state is _State.CONTENT:
                self._errors.append("tool call outside a tool-call section")
                self._implicit = True
            self._end_gap()
            self._state = _State.CALL_ID
        elif kind is _Kind.SECTION_END and state is not _State.CONTENT:
            if in_call:
                self._close_open("the section ended first")
            self._end_gap()
            self._state = _State.CONTENT
        elif kind is _Kind.SECTION_BEGIN and state is _State.CONTENT:
            self._state = _State.SECTION
        elif kind is _Kind.ARG_BEGIN and state is _State.CALL_ID:
            self._start_call()
            self._state = _State.ARGS
        elif kind is _Kind.CALL_END and in_call:
            if state is _State.CALL_ID:
                self._start_call()  # a call with no argument marker: empty arguments
            self._end_call(complete=True)
            self._state = self._after_call()
        else:
            self._errors.append(f"stray {kind.value} marker in {state.value} dropped")

    def _start_call(self) -> None:
        call_id = "".join(self._id).strip()
        too_long, self._id, self._id_len = self._id_len > _MAX_ID, [], 0
        parsed = None if too_long else parse_call_id(call_id)
        if parsed is None:
            self._errors.append(
                f"call id {preview(call_id)} is not functions.NAME:IDX; call dropped"
            )
            return  # no _call: its text is parsed and discarded
        name, prefixed = parsed
        if not prefixed:
            self._errors.append(f"call id {call_id!r} lacks 'functions.'; kept as {name!r}")
        declared = self._declared_names is None or name in self._declared_names
        if not declared and self._policy == "error":
            raise K2Error(f"model called undeclared tool {name!r} (call id {call_id!r})")
        if not declared and self._policy == "drop":
            self._errors.append(f"dropped call {call_id!r} to undeclared tool {name!r}")
            return
        call = _Call(len(self._calls), call_id, name, declared)
        self._calls.append(call)
        self._call = call
        self._out.append(ToolCallStart(call.index, call_id, name))

    def _end_call(self, *, complete: bool) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        self._add_args(call, call.guard.flush())
        arguments = "".join(call.pieces)
        call.pieces = [arguments] if arguments else []
        call.held_ws = []
        call.complete = complete
        call.valid_json = _is_json(arguments)  # the one JSON check per call
        self._out.append(ToolCallDone(call.index, complete, call.valid_json, call.declared))

    def _close_open(self, why: str) -> None:
        """End the open call as incomplete (starting it first if its id was still open)."""
        if self._state is _State.CALL_ID:
            self._start_call()
        if self._call is not None:
            self._errors.append(f"tool call {self._call.id!r} not terminated: {why}")
        self._end_call(complete=False)
        self._state = self._after_call()

    def _after_call(self) -> _State:
        """Back to the section, or to content when the call opened none."""
        implicit, self._implicit = self._implicit, False
        return _State.CONTENT if implicit else _State.SECTION


def parse_tool_calls(
    text: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
    undeclared: UndeclaredPolicy = "keep",
) -> ParsedOutput:
    """Parse one whole model output (the streaming parser fed a single delta).

    >>> out = parse_tool_calls("<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"
    ...     '<|tool_call_argument_begin|>{"a": 1}<|tool_call_end|><|tool_calls_section_end|>')
    >>> out.tool_calls[0].name, out.tool_calls[0].arguments, out.finish_reason_hint
    ('f', '{"a": 1}', 'tool_calls')
    """
    parser = ToolCallParser(tools, undeclared)
    parser.feed(text)
    parser.finish()
    return parser.result()


def to_openai_message(parsed: ParsedOutput) -> dict[str, Any]:
    """An OpenAI chat-completions assistant message; `tool_calls` only when there are some.

    >>> to_openai_message(parse_tool_calls("hi"))
    {'role': 'assistant', 'content': 'hi'}
    """
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content or None}
    if parsed.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in parsed.tool_calls
        ]
    return message


def to_openai_stream_deltas(events: Iterable[Event]) -> list[dict[str, Any]]:
    """OpenAI `choices[0].delta` objects for events; `ToolCallDone` yields none, nor empty text.

    >>> to_openai_stream_deltas([ContentDelta("hi"), ToolCallArgumentsDelta(0, '{"a"')])
    [{'content': 'hi'}, {'tool_calls': [{'index': 0, 'function': {'arguments': '{"a"'}}]}]
    """
    deltas: list[dict[str, Any]] = []
    for ev in events:
        if isinstance(ev, ContentDelta) and ev.text:
            deltas.append({"content": ev.text})
        elif isinstance(ev, ToolCallStart):
            start = {
                "index": ev.index,
                "id": ev.id,
                "type": "function",
                "function": {"name": ev.name, "arguments": ""},  # as OpenAI's first chunk
            }
            deltas.append({"tool_calls": [start]})
        elif isinstance(ev, ToolCallArgumentsDelta) and ev.text:
            piece = {"index": ev.index, "function": {"arguments": ev.text}}
            deltas.append({"tool_calls": [piece]})
    return deltas
