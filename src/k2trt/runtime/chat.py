"""One chat turn on top of the chat layer: request -> prompt ids and sampling, ids -> chunks.

`prepare` turns a `ChatRequest` into prompt ids (the checkpoint's template, user text never
special), sampling parameters and the assistant text `tool_choice` forces into the prompt.
The ids an engine generates become `ChatChunk` deltas in `k2trt.runtime.deltas`
(`DeltaStream`).

tool_choice:

- ``"auto"``: tools are rendered into the prompt; tool calls in the output are parsed.
- ``"none"``: tools are not rendered; if the model still writes tool-call markers, they are
  dropped and the text between them (call ids, arguments) stays in `content`: nothing is lost,
  and no call reaches a client that asked for none.
- ``"required"``: the prompt ends with ``<|tool_calls_section_begin|>``, so the assistant turn
  starts inside a tool-call section and the model's first words are a call.
- ``{"type": "function", "function": {"name": N}}``: the prompt also opens the call,
  ``<|tool_call_begin|>functions.N:IDX<|tool_call_argument_begin|>``, IDX the number of tool
  calls in the history (see `history_tool_calls`); the model writes the arguments. The stream
  still starts with that call's id/name delta.

`max_tokens` larger than the room the context leaves is capped to the room; None means all
of it.
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
from k2trt.chat.toolcalls import declared_function
from k2trt.errors import K2Error
from k2trt.fsutil import read_json
from k2trt.runtime.types import ChatRequest, RequestRejected, SamplingParams

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
        `chat_template.jinja` or `tokenizer_config.json` (our kimi-k2-instruct-0905 if neither
        has one);
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
        found = declared_function(tool)
        if found is None:
            raise RequestRejected(f"tools[{i}] needs a function name", "tools")
        names.append(found[1])
    return names


def history_tool_calls(messages: Sequence[Any]) -> int:
    """How many tool calls the assistant turns of `messages` made: the next call's index.

    Kimi's call ids are `functions.NAME:IDX` with IDX counting calls across the conversation
    (Moonshot's API writes them so; vLLM numbers forced calls the same way), and the real
    templates print history ids as given, so a forced call continues that count.

    >>> history_tool_calls([{"role": "assistant", "tool_calls": [{"id": "functions.f:0"}]}])
    1
    """
    count = 0
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            calls = message.get("tool_calls")
            count += len(calls) if isinstance(calls, list) else 0
    return count


def _forced_call_id(request: ChatRequest, name: str) -> str:
    return f"functions.{name}:{history_tool_calls(request.messages)}"


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
    return f"{SECTION_BEGIN}{CALL_BEGIN}{_forced_call_id(request, name)}{ARGUMENT_BEGIN}"


def _prefill_ids(tok: KimiTokenizer, request: ChatRequest) -> list[int]:
    """Ids of the prefill: markers by id, the tool name as plain text (it is user input)."""
    text = prefill_text(request)
    if not text:
        return []
    ids = [tok.special_ids[SECTION_BEGIN]]
    name = forced_tool(request)
    if name is not None:
        ids.append(tok.special_ids[CALL_BEGIN])
        ids += tok.encode(_forced_call_id(request, name))
        ids.append(tok.special_ids[ARGUMENT_BEGIN])
    return ids


def _rendered_tools(request: ChatRequest) -> list[dict[str, Any]] | None:
    if request.tool_choice == "none" or not request.tools:
        return None
    # "strict" steers the tool grammar (k2trt.chat.grammar), not the prompt.
    return [_without_strict(tool) for tool in request.tools]


def _without_strict(tool: Any) -> Any:
    fn = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(fn, Mapping) or "strict" not in fn:
        return tool
    return {**tool, "function": {k: v for k, v in fn.items() if k != "strict"}}


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
