"""The chat turn: ModelFiles, prepare (prompts, tool_choice, limits), DeltaStream."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from k2trt.chat.prompt import encode_chat
from k2trt.chat.revisions import release_template
from k2trt.chat.toolcalls import ToolCallParser, to_openai_stream_deltas
from k2trt.convert.pipeline import ConvertOptions, convert_checkpoint
from k2trt.errors import K2Error
from k2trt.runtime.chat import ModelFiles, prepare
from k2trt.runtime.deltas import DeltaStream, StopStrings
from k2trt.runtime.types import ChatChunk, ChatRequest, RequestRejected

USER = [{"role": "user", "content": "What is the weather in Beijing?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get-time", "parameters": {"type": "object"}}},
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
CALL = (
    "Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    '<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|><|tool_calls_section_end|>'
)


@pytest.fixture(scope="module")
def files(tiny_ckpt: Path) -> ModelFiles:
    return ModelFiles.load(tiny_ckpt)


def request(**kw: Any) -> ChatRequest:
    kw.setdefault("messages", USER)
    return ChatRequest(**kw)


# -- ModelFiles ---------------------------------------------------------------------------------


def test_load_synth(files: ModelFiles) -> None:
    tok = files.tokenizer
    assert files.model_id == "tiny"
    assert files.template == release_template("0711")
    # synth's generation_config stops on [EOS] only; <|im_end|> always comes first.
    assert files.stop_token_ids == (tok.im_end_id, tok.eos_id) == (1282, 1281)
    assert files.max_context == 131072


def test_load_converted(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "converted"
    convert_checkpoint(tiny_ckpt, out, ConvertOptions())
    loaded = ModelFiles.load(out, model_id="kimi")
    assert loaded.model_id == "kimi"
    assert loaded.stop_token_ids == (1282, 1281)
    assert loaded.template == release_template("0711")
    assert loaded.max_context == 131072
    # Tokenizer config only in tokenizer/ (tiktoken.model at the top) works too.
    mixed = tmp_path / "mixed"
    shutil.copytree(out / "tokenizer", mixed / "tokenizer")
    for name in ("tiktoken.model", "config.json"):
        shutil.copy(out / name, mixed / name)
    again = ModelFiles.load(mixed)
    assert again.template == loaded.template
    assert again.stop_token_ids == (1282, 1281)  # no generation_config: im_end + [EOS]
    assert again.tokenizer.encode("hello") == loaded.tokenizer.encode("hello")


def bare_dir(tiny_ckpt: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("tiktoken.model", "tokenizer_config.json", "config.json"):
        shutil.copy(tiny_ckpt / name, dest / name)
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": [1281, 1283]}))
    return dest


def test_load_bare_tokenizer_dir(tiny_ckpt: Path, tmp_path: Path) -> None:
    bare = ModelFiles.load(bare_dir(tiny_ckpt, tmp_path / "chat-1"))
    assert bare.model_id == "chat-1"
    assert bare.stop_token_ids == (1282, 1281, 1283)
    assert bare.max_context == 131072


def test_context_from_tokenizer_config(tiny_ckpt: Path, tmp_path: Path) -> None:
    root = bare_dir(tiny_ckpt, tmp_path / "b")
    (root / "config.json").unlink()
    config = json.loads((root / "tokenizer_config.json").read_text())
    config["model_max_length"] = 4096
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    assert ModelFiles.load(root).max_context == 4096


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("tiktoken.model", None, "tiktoken.model: missing"),
        ("tokenizer_config.json", None, "tokenizer_config.json: missing"),
        ("generation_config.json", "{", "generation_config.json: generation config is not valid"),
        ("generation_config.json", "[1]", "generation_config.json: generation config must be"),
        ("generation_config.json", '{"eos_token_id": 99999}', "eos_token_id: 99999 is not"),
        ("generation_config.json", '{"eos_token_id": "x"}', "eos_token_id: 'x' is not"),
        ("config.json", "{", "config.json: config is not valid JSON"),
        ("config.json", '{"max_position_embeddings": 0}', "max_position_embeddings: expected"),
        ("config.json", "{}", "config.json: no context size"),  # model_max_length is 1e30
    ],
)
def test_load_bad_files(
    tiny_ckpt: Path, tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    root = bare_dir(tiny_ckpt, tmp_path / "b")
    if text is None:
        (root / name).unlink()
    else:
        (root / name).write_text(text)
    with pytest.raises(K2Error, match=message.replace("(", r"\(")) as exc:
        ModelFiles.load(root)
    assert str(root / name) in str(exc.value)


def test_load_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(K2Error, match="not a directory"):
        ModelFiles.load(tmp_path / "nope")


# -- prepare ------------------------------------------------------------------------------------


def expected_ids(files: ModelFiles, tools: Any) -> list[int]:
    return encode_chat(files.tokenizer, files.template, USER, tools, add_generation_prompt=True).ids


def test_prompt_auto(files: ModelFiles) -> None:
    prepared = prepare(files, request(tools=TOOLS))
    ids = expected_ids(files, TOOLS)
    assert prepared.prompt_ids == ids
    assert prepared.prefill == ""
    assert files.tokenizer.bos_id not in ids  # the template decides BOS; none is added
    text = files.tokenizer.decode(ids)
    assert text.startswith("<|im_system|>tool_declare<|im_middle|>")
    assert text.endswith("<|im_assistant|>assistant<|im_middle|>")


def test_prompt_none_leaves_tools_out(files: ModelFiles) -> None:
    prepared = prepare(files, request(tools=TOOLS, tool_choice="none"))
    assert prepared.prompt_ids == expected_ids(files, None)
    assert "tool_declare" not in files.tokenizer.decode(prepared.prompt_ids)


def test_prompt_required(files: ModelFiles) -> None:
    prepared = prepare(files, request(tools=TOOLS, tool_choice="required"))
    section = files.tokenizer.special_ids["<|tool_calls_section_begin|>"]
    assert prepared.prompt_ids == [*expected_ids(files, TOOLS), section]
    assert prepared.prefill == "<|tool_calls_section_begin|>"


def test_prompt_named(files: ModelFiles) -> None:
    prepared = prepare(files, request(tools=TOOLS, tool_choice=NAMED))
    tok = files.tokenizer
    prefill = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        "<|tool_call_argument_begin|>"
    )
    assert prepared.prefill == prefill
    assert prepared.prompt_ids == expected_ids(files, TOOLS) + tok.encode_with_specials(prefill)


def test_prompt_named_continues_the_history_count(files: ModelFiles) -> None:
    # The template prints history ids verbatim; a forced call takes the next conversation-wide
    # index, as Moonshot's ids (functions.NAME:IDX) count calls across the conversation.
    call = {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {**call, "id": "functions.get_weather:0"},
                {**call, "id": "functions.get_weather:1"},
            ],
        },
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "functions.get_weather:1", "content": "rain"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    prepared = prepare(files, request(messages=history, tools=TOOLS, tool_choice=NAMED))
    assert prepared.prefill.endswith(
        "<|tool_call_begin|>functions.get_weather:2<|tool_call_argument_begin|>"
    )
    text = files.tokenizer.decode(prepared.prompt_ids)
    assert "## Return of functions.get_weather:1\n    rain<|im_end|>" in text
    out = DeltaStream(files, request(messages=history, tools=TOOLS, tool_choice=NAMED))
    first = out.feed([])
    assert [d.get("id") for c in first for d in c.tool_calls] == ["functions.get_weather:2"]


def test_prompt_named_tool_name_is_plain_text(files: ModelFiles) -> None:
    odd = "x<|im_end|>"
    tools = [{"type": "function", "function": {"name": odd, "parameters": {}}}]
    choice = {"type": "function", "function": {"name": odd}}
    prepared = prepare(files, request(tools=tools, tool_choice=choice))
    tok = files.tokenizer
    tail = prepared.prompt_ids[-len(tok.encode(f"functions.{odd}:0")) - 1 :]
    assert tail == [
        *tok.encode(f"functions.{odd}:0"),
        tok.special_ids["<|tool_call_argument_begin|>"],
    ]


@pytest.mark.parametrize(
    ("kw", "field", "message"),
    [
        ({"tools": TOOLS, "tool_choice": "any"}, "tool_choice", "must be one of"),
        ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice", "object must"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "'nope', which is not among the tools",
        ),
        ({"tool_choice": "required"}, "tool_choice", "no tools"),
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"temperature": -1.0}, "temperature", ">= 0"),
        ({"top_p": 0.0}, "top_p", r"\(0, 1\]"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages", "content"),
        ({"messages": "hi"}, "messages", "list of message"),
        ({"tools": [{"type": "function"}]}, "tools", r"tools\[0\] needs a function name"),
        ({"tools": {"a": 1}}, "tools", "tools must be a list"),
    ],
)
def test_prepare_rejects(files: ModelFiles, kw: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(RequestRejected, match=message) as exc:
        prepare(files, request(**kw))
    assert exc.value.field == field


def test_sampling_and_max_tokens(files: ModelFiles) -> None:
    n = len(prepare(files, request()).prompt_ids)
    small = dataclasses.replace(files, max_context=n + 10)
    params = prepare(small, request(temperature=0.3, top_p=0.9, seed=7, max_tokens=4)).sampling
    assert (params.max_tokens, params.temperature, params.top_p, params.seed) == (4, 0.3, 0.9, 7)
    assert params.stop_token_ids == (1282, 1281)
    assert prepare(small, request()).sampling.max_tokens == 10  # None: all the room
    assert prepare(small, request(max_tokens=50)).sampling.max_tokens == 10  # capped
    with pytest.raises(RequestRejected, match=f"prompt is {n} tokens") as exc:
        prepare(dataclasses.replace(files, max_context=n), request())
    assert exc.value.field == "messages"


# -- DeltaStream --------------------------------------------------------------------------------


def flatten(chunks: Sequence[ChatChunk]) -> list[dict[str, Any]]:
    """Chunks back to OpenAI delta objects (one per content piece or tool-call entry)."""
    out: list[dict[str, Any]] = []
    for c in chunks:
        assert not (c.content and c.tool_calls), "a chunk never mixes content and tool calls"
        if c.content:
            out.append({"content": c.content})
        out += [{"tool_calls": [d]} for d in c.tool_calls]
    return out


def accumulate(deltas: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """What a client rebuilds from deltas: content and whole calls."""
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        for entry in d.get("tool_calls", ()):
            if "id" in entry:
                assert entry["index"] not in calls
                calls[entry["index"]] = {k: v for k, v in entry.items() if k != "function"}
                calls[entry["index"]]["name"] = entry["function"]["name"]
                calls[entry["index"]]["arguments"] = entry["function"]["arguments"]
            else:
                calls[entry["index"]]["arguments"] += entry["function"]["arguments"]
    return content, [calls[i] for i in sorted(calls)]


def one_shot(text: str, tools: Any = TOOLS) -> list[dict[str, Any]]:
    parser = ToolCallParser(tools)
    return to_openai_stream_deltas(parser.feed(text) + parser.finish())


def stream_ids(
    files: ModelFiles, req: ChatRequest, ids: Sequence[int], *, step: int = 1
) -> tuple[list[ChatChunk], ChatChunk, DeltaStream]:
    out = DeltaStream(files, req, prompt_tokens=11)
    chunks: list[ChatChunk] = []
    for i in range(0, len(ids), step):
        new = out.feed(ids[i : i + step])
        assert all(c.finish_reason is None for c in new)
        chunks += new
    return chunks, out.finish(), out


def test_every_chunk_carries_the_prompt_tokens(files: ModelFiles) -> None:
    # Anthropic's message_start (sent with the first chunk) reports input_tokens.
    ids = files.tokenizer.encode("Hello there, how are you?")
    chunks, last, _ = stream_ids(files, request(), ids)
    assert chunks and all(c.prompt_tokens == 11 for c in [*chunks, last])
    assert all(c.completion_tokens == 0 for c in chunks) and last.completion_tokens == len(ids)


def test_tool_call_token_by_token_matches_one_shot(files: ModelFiles) -> None:
    tok = files.tokenizer
    ids = [*tok.encode_with_specials(CALL), tok.im_end_id]
    chunks, last, out = stream_ids(files, request(tools=TOOLS), ids)
    streamed = flatten([*chunks, last])
    expected = one_shot(CALL)
    assert accumulate(streamed) == accumulate(expected)
    assert accumulate(expected) == (
        "Let me check.",
        [
            {
                "index": 0,
                "id": "functions.get_weather:0",
                "type": "function",
                "name": "get_weather",
                "arguments": '{"city": "Beijing"}',
            }
        ],
    )
    first_call = next(d for d in streamed if "tool_calls" in d)
    assert first_call == next(d for d in expected if "tool_calls" in d)
    assert len(streamed) > len(expected)  # really streamed in pieces
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
        "tool_calls",
        11,
        len(ids),
    )
    assert out.done


def test_tool_call_in_one_feed_equals_one_shot_deltas(files: ModelFiles) -> None:
    ids = files.tokenizer.encode_with_specials(CALL)
    chunks, last, _ = stream_ids(files, request(tools=TOOLS), ids, step=len(ids))
    assert flatten([*chunks, last]) == one_shot(CALL)
    assert [bool(c.content) for c in chunks] == [True, False]  # content chunk, then calls


def test_named_prefill_stream(files: ModelFiles) -> None:
    tok = files.tokenizer
    reply = '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'
    ids = tok.encode_with_specials(reply)
    chunks, last, _ = stream_ids(files, request(tools=TOOLS, tool_choice=NAMED), ids)
    start = {
        "index": 0,
        "id": "functions.get_weather:0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert chunks[0].tool_calls[0] == start  # emitted with the first generated id
    content, calls = accumulate(flatten([*chunks, last]))
    assert (content, calls[0]["arguments"], len(calls)) == ("", '{"city": "Paris"}', 1)
    assert last.finish_reason == "tool_calls"


def test_named_prefill_start_even_without_output(files: ModelFiles) -> None:
    out = DeltaStream(files, request(tools=TOOLS, tool_choice=NAMED))
    last = out.finish("length")
    assert [d["id"] for d in last.tool_calls] == ["functions.get_weather:0"]
    assert last.finish_reason == "length"  # the forced call never ended: cut by max_tokens


def test_required_prefill_stream(files: ModelFiles) -> None:
    reply = (
        "<|tool_call_begin|>functions.get-time:0<|tool_call_argument_begin|>{}"
        "<|tool_call_end|><|tool_calls_section_end|>"
    )
    ids = files.tokenizer.encode_with_specials(reply)
    chunks, last, _ = stream_ids(files, request(tools=TOOLS, tool_choice="required"), ids)
    content, calls = accumulate(flatten([*chunks, last]))
    assert (content, [(c["name"], c["arguments"]) for c in calls]) == ("", [("get-time", "{}")])
    assert last.finish_reason == "tool_calls"


def test_tool_choice_none_keeps_text_drops_markers(files: ModelFiles) -> None:
    ids = files.tokenizer.encode_with_specials(CALL)
    chunks, last, _ = stream_ids(files, request(tools=TOOLS, tool_choice="none"), ids)
    content, calls = accumulate(flatten([*chunks, last]))
    assert content == 'Let me check.functions.get_weather:0{"city": "Beijing"}'
    assert (calls, last.finish_reason) == ([], "stop")


def test_stop_string_split_across_tokens(files: ModelFiles) -> None:
    tok = files.tokenizer
    ids = tok.encode("Hello wor") + tok.encode("ld, and more") + tok.encode(" text")
    req = request(stop=("zz", "world,"))  # "world," spans the two pieces' tokens
    chunks, last, out = stream_ids(files, req, ids)
    assert "".join(c.content for c in [*chunks, last]) == "Hello "
    assert out.done and last.finish_reason == "stop"
    assert last.stop_sequence == "world,"  # the string as the request gave it, not a piece
    # Ids after the match are not counted (the caller stops the engine at `done`).
    assert last.completion_tokens == len(tok.encode("Hello wor") + tok.encode("ld,"))


def test_stop_string_held_then_released(files: ModelFiles) -> None:
    tok = files.tokenizer
    out = DeltaStream(files, request(stop=("ENDX",)))
    first = out.feed(tok.encode("abc EN"))
    assert "".join(c.content for c in first) == "abc "  # "EN" may start "ENDX": held
    second = out.feed(tok.encode("D"))
    assert "".join(c.content for c in second) == ""
    last = out.finish()
    assert (last.content, last.finish_reason, out.done) == ("END", "stop", False)
    assert last.stop_sequence is None  # held back, never completed


def test_the_stop_string_that_ends_first_wins() -> None:
    stops = StopStrings(("bcde", "cd"))  # "bcde" starts first, but "cd" ends first
    assert stops.feed("abcdef") == "ab"
    assert stops.matched == "cd"
    assert stops.feed("more") == ""
    tie = StopStrings(("bc", "abc"))  # both end at once: the longer one
    assert (tie.feed("xabcx"), tie.matched) == ("x", "abc")


@pytest.mark.parametrize("cut", range(1, 6))
def test_stop_match_does_not_depend_on_how_text_arrives(cut: int) -> None:
    text = "xyzzy"
    stops = StopStrings(("xyz", "y"))
    released = stops.feed(text[:cut]) + stops.feed(text[cut:])
    assert (released, stops.matched) == ("x", "y")


def test_no_stop_string_no_stop_sequence(files: ModelFiles) -> None:
    ids = files.tokenizer.encode("plain words")
    _, by_end, _ = stream_ids(files, request(stop=("never",)), ids)
    _, by_id, _ = stream_ids(files, request(stop=("never",)), [*ids, files.tokenizer.im_end_id])
    assert (by_end.stop_sequence, by_id.stop_sequence) == (None, None)
    assert (by_end.finish_reason, by_id.finish_reason) == ("stop", "stop")


def test_stop_string_inside_tool_arguments_cuts_the_call(files: ModelFiles) -> None:
    ids = files.tokenizer.encode_with_specials(CALL)
    chunks, last, out = stream_ids(files, request(tools=TOOLS, stop=("Beijing",)), ids)
    content, calls = accumulate(flatten([*chunks, last]))
    assert (content, calls[0]["arguments"]) == ("Let me check.", '{"city": "')
    assert out.done and last.finish_reason == "tool_calls"
    assert last.stop_sequence == "Beijing"


@pytest.mark.parametrize("stop_id", [1282, 1281])
def test_stop_id_ends_and_is_not_content(files: ModelFiles, stop_id: int) -> None:
    tok = files.tokenizer
    ids = [*tok.encode("hi there"), stop_id, *tok.encode("never")]
    out = DeltaStream(files, request(), prompt_tokens=5)
    chunks = out.feed(ids)
    assert out.done
    assert out.feed(tok.encode("ignored")) == []
    last = out.finish("length")  # a stop id beats what the caller guessed
    assert "".join(c.content for c in [*chunks, last]) == "hi there"
    assert (last.finish_reason, last.prompt_tokens) == ("stop", 5)
    assert last.completion_tokens == out.completion_tokens == len(tok.encode("hi there")) + 1


def test_length_and_plain_finish(files: ModelFiles) -> None:
    tok = files.tokenizer
    out = DeltaStream(files, request())
    out.feed(tok.encode("abc"))
    assert not out.done
    last = out.finish("length")
    assert (last.finish_reason, last.completion_tokens) == ("length", len(tok.encode("abc")))
    assert DeltaStream(files, request()).finish().finish_reason == "stop"


def test_split_utf8_character(files: ModelFiles) -> None:
    tok = files.tokenizer
    ids = tok.encode("é€")
    chunks, last, _ = stream_ids(files, request(), ids)
    assert len(ids) > 2  # byte-level pieces: the characters arrive split
    assert "".join(c.content for c in [*chunks, last]) == "é€"
    assert all("\ufffd" not in c.content for c in chunks)


def test_a_call_cut_by_max_tokens_finishes_with_length(files: ModelFiles) -> None:
    tok = files.tokenizer
    cut = CALL[: CALL.index("<|tool_call_end|>") - 3]  # inside the arguments
    out = DeltaStream(files, request(tools=TOOLS), prompt_tokens=3)
    chunks = out.feed(tok.encode_with_specials(cut))
    last = out.finish("length")
    assert last.finish_reason == "length"
    assert any(c.tool_calls for c in [*chunks, last])  # the partial call is still returned
    whole = DeltaStream(files, request(tools=TOOLS))
    whole.feed(tok.encode_with_specials(CALL))
    assert whole.finish("length").finish_reason == "tool_calls"  # complete call, then cut
