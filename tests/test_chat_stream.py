"""Token ids in, the same parse as the whole text: detokenizer + parser together."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2trt.chat.stream import OutputStream
from k2trt.chat.tokenizer import KimiTokenizer
from k2trt.chat.toolcalls import ContentDelta, parse_tool_calls

OUTPUT = (
    "Sure — 北京天气 🙂 coming.<|tool_calls_section_begin|><|tool_call_begin|>"
    'functions.get-weather:0<|tool_call_argument_begin|>{\n  "city": "北京"\n}'
    "<|tool_call_end|><|tool_calls_section_end|><|im_end|>"
)


@pytest.fixture(scope="module")
def tok(tiny_ckpt: Path) -> KimiTokenizer:
    return KimiTokenizer.from_dir(tiny_ckpt)


def test_marker_ids_reach_the_parser_and_im_end_does_not(tok: KimiTokenizer) -> None:
    ids = tok.encode_with_specials(OUTPUT)
    assert tok.special_ids["<|tool_call_begin|>"] in ids and ids[-1] == tok.im_end_id
    stream = OutputStream(tok)
    for i in ids:
        stream.feed([i])
    stream.finish()
    result = stream.result()
    assert result == parse_tool_calls(OUTPUT.removesuffix("<|im_end|>"))
    assert result.content == "Sure — 北京天气 🙂 coming."
    assert result.tool_calls[0].arguments == '{\n  "city": "北京"\n}'


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=60))
def test_any_id_chunking_gives_the_same_result(tok: KimiTokenizer, sizes: list[int]) -> None:
    ids = tok.encode_with_specials(OUTPUT)
    stream, content, at = OutputStream(tok), "", 0
    for size in sizes * len(ids):
        if at >= len(ids):
            break
        events = stream.feed(ids[at : at + size])
        content += "".join(e.text for e in events if isinstance(e, ContentDelta))
        at += size
    events = stream.finish()
    content += "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert "\ufffd" not in content  # no character ever split across deltas
    assert stream.result() == parse_tool_calls(OUTPUT.removesuffix("<|im_end|>"))
    assert content == stream.result().content


def _run(tok: KimiTokenizer, ids: list[int]) -> tuple[str, OutputStream]:
    stream, content = OutputStream(tok), ""
    for i in ids:
        content += "".join(e.text for e in stream.feed([i]) if isinstance(e, ContentDelta))
    content += "".join(e.text for e in stream.finish() if isinstance(e, ContentDelta))
    return content, stream


def test_marker_typed_as_plain_text_at_the_end_is_content(tok: KimiTokenizer) -> None:
    """Markers are single special tokens: marker-like text the model spells out is text."""
    ids = tok.encode("Use <|tool_call_beg")  # plain tokens, never the special id
    assert not set(ids) & set(tok.special_ids.values())
    content, stream = _run(tok, ids)
    assert content == stream.result().content == "Use <|tool_call_beg"
    assert stream.result().errors == []


def test_noise_between_marker_ids_is_dropped_and_noted(tok: KimiTokenizer) -> None:
    text = (
        "Hi<|tool_calls_section_begin|> stray words <|tool_call_begin|>functions.f:0"
        "<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>"
    )
    content, stream = _run(tok, tok.encode_with_specials(text))
    result = stream.result()
    assert content == result.content == "Hi"
    assert [c.name for c in result.tool_calls] == ["f"]
    assert result.errors == ["text outside any call in a tool-call section dropped: 'stray words '"]
