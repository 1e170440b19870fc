"""One chat turn on top of the chat layer: request -> prompt ids and sampling, ids -> chunks.

`prepare` turns a `ChatRequest` into prompt ids (the checkpoint's template, user text never
special), sampling parameters and the assistant text `tool_choice` forces into the prompt.
`DeltaStream` turns the ids an engine generates into `ChatChunk` deltas: the incremental
detokenizer, then stop strings, then the tool-call parser (the two pieces `OutputStream`
combines, with the stop-string cut between them, so a stop string ends the raw output the
way the model wrote it, markers included).

tool_choice:

- ``"auto"``: tools are rendered into the prompt; tool calls in the output are parsed.
- ``"none"``: tools are not rendered; if the model still writes tool-call markers, they are
  dropped and the text between them (call ids, arguments) stays in `content`: nothing is lost,
  and no call reaches a client that asked for none.
- ``"required"``: the prompt ends with ``<|tool_calls_section_begin|>``, so the assistant turn
  starts inside a tool-call section and the model's first words are a call.
- ``{"type": "function", "function": {"name": N}}``: the prompt also opens the call,
  ``<|tool_call_begin|>functions.N:0<|tool_call_argument_begin|>``; the model writes the
  arguments. The stream still starts with that call's id/name delta.

`max_tokens` larger than the room the context leaves is capped to the room; None means all
of it.

Ending a turn: a stop id (`<|im_end|>`, `[EOS]`, generation_config's) is counted in
`completion_tokens` but never becomes content; a stop string (`request.stop`) cuts the output
before the match (the stop string that ends first, however the text arrived), text that
could be the start of one is held back until it cannot. Either sets `DeltaStream.done`, and
ids fed after it are ignored. The final chunk carries whatever was still held back (content
and tool-call deltas both, in the rare case there are both: content first), finish_reason
("tool_calls" whenever a call was kept), usage, and `stop_sequence`: the stop string that
matched, as the request spelled it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2trt.chat.prompt import encode_chat
from k2trt.chat.template import load_chat_template
from k2trt.chat.tokenizer import KimiTokenizer
from k2trt.chat.toolcalls import (
    ContentDelta,
    Event,
    ToolCallParser,
    ToolCallStart,
    to_openai_stream_deltas,
)
from k2trt.errors import K2Error
from k2trt.fsutil import read_json
from k2trt.runtime.types import ChatChunk, ChatRequest, RequestRejected, SamplingParams

TOKENIZER_FILES = ("tiktoken.model", "tokenizer_config.json")
TOKENIZER_SUBDIR = "tokenizer"  # where k2trt convert puts an AutoTokenizer-loadable copy
SECTION_BEGIN = "<|tool_calls_section_begin|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
TOOL_CHOICES = ("auto", "none", "required")
# A model_max_length this large is tokenizer_config's "no limit" (HF writes 1e30).
_NO_LIMIT = 1 << 40


# ---------------------------------------------------------------------------------------------
# The files a chat turn needs


@dataclass(frozen=True)
class ModelFiles:
    """Tokenizer, chat template, stop ids and context size of one model.

    >>> files = ModelFiles.load("kimi-k2-trtllm")  # doctest: +SKIP
    >>> files.stop_token_ids  # doctest: +SKIP
    (163586, 163585)
    """

    tokenizer: KimiTokenizer
    template: str
    stop_token_ids: tuple[int, ...]
    max_context: int
    model_id: str

    @classmethod
    def load(cls, path: str | Path, model_id: str | None = None) -> ModelFiles:
        """Read a checkpoint (synth, source or converted) or a bare tokenizer directory.

        Tokenizer files are looked for at the top, then in `tokenizer/`; the chat template in
        `chat_template.jinja` or `tokenizer_config.json` (built-in kimi-v3 if neither has one);
        `generation_config.json` is optional; `config.json` gives the context size.
        """
        root = Path(path)
        if not root.is_dir():
            raise K2Error(
                "not a directory (expected a checkpoint or tokenizer directory)", path=root
            )
        model_file, config_file = _tokenizer_files(root)
        tokenizer = KimiTokenizer.from_files(model_file, config_file)
        template_dir = root if (root / "chat_template.jinja").is_file() else config_file.parent
        template = load_chat_template(template_dir).text
        return cls(
            tokenizer=tokenizer,
            template=template,
            stop_token_ids=_stop_ids(root, tokenizer),
            max_context=_max_context(root, tokenizer),
            model_id=model_id or root.resolve().name,
        )


def _tokenizer_files(root: Path) -> tuple[Path, Path]:
    """(tiktoken.model, tokenizer_config.json): each at the top, else in `tokenizer/`."""
    found = []
    for name in TOKENIZER_FILES:
        where = next(
            (d / name for d in (root, root / TOKENIZER_SUBDIR) if (d / name).is_file()), None
        )
        if where is None:
            raise K2Error(
                f"missing (a Kimi tokenizer needs {' and '.join(TOKENIZER_FILES)}, here or in "
                f"{TOKENIZER_SUBDIR}/)",
                path=root / name,
            )
        found.append(where)
    return found[0], found[1]


def _stop_ids(root: Path, tok: KimiTokenizer) -> tuple[int, ...]:
    """<|im_end|> first (what a scripted turn ends with), then the config's, then [EOS]."""
    path = root / "generation_config.json"
    listed: list[int] = []
    if path.exists():
        gen = read_json(path, "generation config")
        if not isinstance(gen, dict):
            raise K2Error("generation config must be a JSON object", path=path)
        eos = gen.get("eos_token_id")
        values = [] if eos is None else eos if isinstance(eos, list) else [eos]
        for value in values:
            if not (isinstance(value, int) and not isinstance(value, bool)) or not (
                0 <= value < tok.vocab_size
            ):
                raise K2Error(
                    f"eos_token_id: {value!r} is not a token id in 0..{tok.vocab_size - 1}",
                    path=path,
                )
            listed.append(value)
    return tuple(dict.fromkeys([tok.im_end_id, *listed, tok.eos_id]))


def _max_context(root: Path, tok: KimiTokenizer) -> int:
    path = root / "config.json"
    if path.exists():
        config = read_json(path, "config")
        if not isinstance(config, dict):
            raise K2Error("config must be a JSON object", path=path)
        value = config.get("max_position_embeddings")
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise K2Error(
                    f"max_position_embeddings: expected a positive integer, got {value!r}",
                    path=path,
                )
            return value
    value = tok.config.get("model_max_length")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_LIMIT:
        return value
    raise K2Error(
        "no context size: needs max_position_embeddings (or tokenizer_config.json's "
        "model_max_length)",
        path=path,
    )


# ---------------------------------------------------------------------------------------------
# Request -> prompt


@dataclass(frozen=True)
class Prepared:
    """What an engine is given for one request; `prefill` is the forced assistant text."""

    prompt_ids: list[int]
    sampling: SamplingParams
    prefill: str


def forced_tool(request: ChatRequest) -> str | None:
    """The function name a named tool_choice forces (None for the string forms).

    >>> forced_tool(ChatRequest([], tool_choice={"type": "function", "function": {"name": "f"}}))
    'f'
    """
    choice = request.tool_choice
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise RequestRejected(
                f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or "
                f'{{"type": "function", "function": {{"name": ...}}}}, got {choice!r}',
                "tool_choice",
            )
        return None
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(choice, Mapping) or choice.get("type") != "function" or not name:
        raise RequestRejected(
            'tool_choice object must be {"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if not isinstance(name, str):
        raise RequestRejected("tool_choice.function.name must be a string", "tool_choice")
    return name


def _declared_names(tools: Sequence[Any] | None) -> list[str]:
    """Function names of `tools` (OpenAI `{"type": "function", "function": {...}}` or bare)."""
    if tools is not None and not isinstance(tools, list):
        raise RequestRejected("tools must be a list of tool objects", "tools")
    names = []
    for i, tool in enumerate(tools or ()):
        fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str) or not name:
            raise RequestRejected(f"tools[{i}] needs a function name", "tools")
        names.append(name)
    return names


def prefill_text(request: ChatRequest) -> str:
    """The assistant text tool_choice forces: "" for auto/none (see the module docstring).

    >>> prefill_text(ChatRequest([], tools=[{"function": {"name": "f"}}], tool_choice="required"))
    '<|tool_calls_section_begin|>'
    """
    name = forced_tool(request)
    if request.tool_choice in ("auto", "none"):
        return ""
    declared = _declared_names(request.tools)
    if not declared:
        raise RequestRejected(
            "tool_choice forces a tool call but no tools are given", "tool_choice"
        )
    if name is None:
        return SECTION_BEGIN
    if name not in declared:
        raise RequestRejected(
            f"tool_choice names {name!r}, which is not among the tools ({', '.join(declared)})",
            "tool_choice",
        )
    return f"{SECTION_BEGIN}{CALL_BEGIN}functions.{name}:0{ARGUMENT_BEGIN}"


def _prefill_ids(tok: KimiTokenizer, request: ChatRequest) -> list[int]:
    """Ids of the prefill: markers by id, the tool name as plain text (it is user input)."""
    text = prefill_text(request)
    if not text:
        return []
    ids = [tok.special_ids[SECTION_BEGIN]]
    name = forced_tool(request)
    if name is not None:
        ids.append(tok.special_ids[CALL_BEGIN])
        ids += tok.encode(f"functions.{name}:0")
        ids.append(tok.special_ids[ARGUMENT_BEGIN])
    return ids


def _rendered_tools(request: ChatRequest) -> list[dict[str, Any]] | None:
    if request.tool_choice == "none" or not request.tools:
        return None
    return request.tools


def _sampling(files: ModelFiles, request: ChatRequest, prompt_len: int) -> SamplingParams:
    room = files.max_context - prompt_len
    if room < 1:
        raise RequestRejected(
            f"the prompt is {prompt_len} tokens; {files.model_id} has a context of "
            f"{files.max_context} tokens, leaving no room to generate",
            "messages",
        )
    wanted = request.max_tokens
    if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int)):
        raise RequestRejected(f"max_tokens must be an integer, got {wanted!r}", "max_tokens")
    if wanted is not None and wanted < 1:
        raise RequestRejected(f"max_tokens must be at least 1, got {wanted}", "max_tokens")
    if not (math.isfinite(request.temperature) and request.temperature >= 0):
        raise RequestRejected(f"temperature must be >= 0, got {request.temperature}", "temperature")
    if not (0 < request.top_p <= 1):
        raise RequestRejected(f"top_p must be in (0, 1], got {request.top_p}", "top_p")
    return SamplingParams(
        max_tokens=room if wanted is None else min(wanted, room),
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop_token_ids=files.stop_token_ids,
    )


def prepare(files: ModelFiles, request: ChatRequest) -> Prepared:
    """Prompt ids (template + generation prompt + prefill) and sampling for one request.

    Raises RequestRejected naming the field at fault (messages, tools, tool_choice,
    max_tokens, temperature, top_p).

    >>> p = prepare(files, ChatRequest([{"role": "user", "content": "hi"}], max_tokens=8))
    ... # doctest: +SKIP
    >>> p.sampling.max_tokens, p.prefill  # doctest: +SKIP
    (8, '')
    """
    _declared_names(request.tools)  # the output parser needs every tool named
    prefill = prefill_text(request)
    try:
        encoded = encode_chat(
            files.tokenizer,
            files.template,
            request.messages,
            _rendered_tools(request),
            add_generation_prompt=True,
        )
    except K2Error as exc:
        field = "tools" if (exc.path or "").startswith("tools") else "messages"
        raise RequestRejected(str(exc), field) from exc
    ids = encoded.ids + _prefill_ids(files.tokenizer, request)
    return Prepared(ids, _sampling(files, request, len(ids)), prefill)


# ---------------------------------------------------------------------------------------------
# Generated ids -> chunks


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
        return _chunks(events)

    def finish(self, reason: str | None = None) -> ChatChunk:
        """The last chunk: whatever was held back, finish_reason and usage.

        finish_reason is "tool_calls" when a call was kept, else `reason` (the caller says
        "length" when max_tokens ran out) unless a stop id or stop string ended the turn,
        else "stop". `stop_sequence` names the stop string that ended the turn, if one did.
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
        if self._parser.has_calls():
            last.finish_reason = "tool_calls"
        elif self.done or reason is None:
            last.finish_reason = "stop"
        else:
            last.finish_reason = reason
        last.prompt_tokens = self._prompt_tokens
        last.completion_tokens = self.completion_tokens
        last.stop_sequence = self._stops.matched
        return last
