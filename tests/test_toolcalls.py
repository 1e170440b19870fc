"""Kimi K2 tool-call parser: exact results on real-looking outputs, and any chunking agrees."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2trt.chat.toolcalls import (
    MARKERS,
    ContentDelta,
    Event,
    ParsedOutput,
    ToolCall,
    ToolCallArgumentsDelta,
    ToolCallDone,
    ToolCallParser,
    ToolCallStart,
    UndeclaredPolicy,
    parse_call_id,
    parse_tool_calls,
    to_openai_message,
    to_openai_stream_deltas,
)
from k2trt.errors import K2Error

SB, SE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CB, AB, CE = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"


def _tool(name: str) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


TOOLS = [_tool(n) for n in ("get_weather", "search", "a.b", "get-weather", "x_y")]
BIG_ARGS = json.dumps({"path": "notes.md", "content": "lorem ipsum dolor sit amet\n" * 7600})
PRETTY = '{\n  "query": "Kimi K2 \\"tool\\" calls",\n  "filters": {\n    "year": 2025\n  }\n}'


def call(
    index: int,
    id_: str,
    name: str,
    arguments: str,
    complete: bool = True,
    valid_json: bool = True,
    declared: bool = True,
) -> ToolCall:
    return ToolCall(index, id_, name, arguments, complete, valid_json, declared)


def out(
    content: str, calls: list[ToolCall] | None = None, errors: list[str] | None = None
) -> ParsedOutput:
    calls = calls or []
    return ParsedOutput(content, calls, "tool_calls" if calls else None, errors or [])


@dataclass(frozen=True)
class Fixture:
    name: str
    text: str
    expected: ParsedOutput
    policy: UndeclaredPolicy = "keep"


UNCLOSED = "tool-call section not closed"
W0 = "functions.get_weather:0"

FIXTURES = [
    Fixture("plain", "The capital of France is Paris.", out("The capital of France is Paris.")),
    Fixture(
        "text_then_call",
        f'I\'ll check the weather in Beijing for you.{SB}{CB}{W0}{AB}{{"city": "Beijing"}}{CE}{SE}',
        out(
            "I'll check the weather in Beijing for you.",
            [call(0, W0, "get_weather", '{"city": "Beijing"}')],
        ),
    ),
    Fixture(
        "two_calls_spaced",
        f"Let me look up both cities.\n\n{SB}\n{CB} functions.get_weather:0 {AB} "
        f'{{"city": "Paris"}} {CE}\n{CB}functions.get_weather:1\n{AB}{{"city": "Tokyo"}}'
        f"{CE}\n{SE}",
        out(
            "Let me look up both cities.\n\n",
            [
                call(0, W0, "get_weather", '{"city": "Paris"}'),
                call(1, "functions.get_weather:1", "get_weather", '{"city": "Tokyo"}'),
            ],
        ),
    ),
    Fixture(
        "pretty_multiline",
        f"{SB}{CB}\nfunctions.search:0\n{AB}\n{PRETTY}\n\n{CE}{SE}",
        out("", [call(0, "functions.search:0", "search", PRETTY)]),
    ),
    Fixture(
        "odd_names",
        f"{SB}{CB}functions.a.b:0{AB}{{}}{CE}{CB}functions.get-weather:1{AB}"
        f'{{"q": 1}}{CE}{CB}functions.x_y:2{AB}[]{CE}{SE}',
        out(
            "",
            [
                call(0, "functions.a.b:0", "a.b", "{}"),
                call(1, "functions.get-weather:1", "get-weather", '{"q": 1}'),
                call(2, "functions.x_y:2", "x_y", "[]"),
            ],
        ),
    ),
    Fixture(
        "singular_section_marker",
        f'Checking.<|tool_call_section_begin|>{CB}{W0}{AB}{{"city": "Oslo"}}{CE}'
        "<|tool_call_section_end|>",
        out("Checking.", [call(0, W0, "get_weather", '{"city": "Oslo"}')]),
    ),
    Fixture(
        "truncated_mid_args",
        f'Searching.{SB}{CB}functions.search:0{AB}{{"query": "long\n  que',
        out(
            "Searching.",
            [call(0, "functions.search:0", "search", '{"query": "long\n  que', False, False)],
            ["tool call 'functions.search:0' not terminated: output ended inside it", UNCLOSED],
        ),
    ),
    Fixture(
        "truncated_mid_id",
        f"{SB}{CB}functions.get_wea",
        out(
            "",
            [],  # a cut-off id is no functions.NAME:IDX id: no call, finish_reason stays
            ["call id 'functions.get_wea' is not functions.NAME:IDX; call dropped", UNCLOSED],
        ),
    ),
    Fixture(
        "truncated_after_id",
        f"Checking.{SB}{CB}{W0}",
        out(
            "Checking.",
            [call(0, W0, "get_weather", "", False, False)],
            [f"tool call '{W0}' not terminated: output ended inside it", UNCLOSED],
        ),
    ),
    Fixture(
        "partial_marker_at_end_is_text",
        f'{SB}{CB}{W0}{AB}{{"city": "Rome"}}<|tool_call_e',
        out(
            "",
            [call(0, W0, "get_weather", '{"city": "Rome"}<|tool_call_e', False, False)],
            [f"tool call '{W0}' not terminated: output ended inside it", UNCLOSED],
        ),
    ),
    Fixture(
        "partial_marker_at_end_of_content",
        "Hello <|tool_call_beg",
        out("Hello <|tool_call_beg"),
    ),
    Fixture(
        "noise_in_section_dropped",
        f'Checking. {SB} noise text {CB}{W0}{AB}{{"city": "Oslo"}}{CE} more\n{SE} done',
        out(
            "Checking.  done",
            [call(0, W0, "get_weather", '{"city": "Oslo"}')],
            [
                "text outside any call in a tool-call section dropped: 'noise text '",
                "text outside any call in a tool-call section dropped: 'more\\n'",
            ],
        ),
    ),
    Fixture(
        "id_without_functions_prefix",
        f'{SB}{CB}get_weather:0{AB}{{"city": "Paris"}}{CE}{SE}',
        out(
            "",
            [call(0, "get_weather:0", "get_weather", '{"city": "Paris"}')],
            ["call id 'get_weather:0' lacks 'functions.'; kept as 'get_weather'"],
        ),
    ),
    Fixture(
        "malformed_id_dropped",
        f"{SB}{CB}functions.get_weather.0{AB}{{}}{CE}{CB}functions.search:1{AB}{{}}{CE}{SE}",
        out(
            "",
            [call(0, "functions.search:1", "search", "{}")],
            ["call id 'functions.get_weather.0' is not functions.NAME:IDX; call dropped"],
        ),
    ),
    Fixture(
        "removed_marker_joins_nothing",
        f'a<|tool_call{SE}_end|>b{SB}{CB}{W0}{AB}{{"q": "<|tool_call{SB}_end|>"}}{CE}{SE}',
        out(
            "a<|tool_callb",
            [call(0, W0, "get_weather", '{"q": "<|tool_call"}')],
            [
                "stray section_end marker in content dropped",
                "text around removed markers formed '<|tool_call_end|>'; dropped",
                "stray section_begin marker in args dropped",
                "text around removed markers formed '<|tool_call_end|>'; dropped",
            ],
        ),
    ),
    Fixture(
        "invalid_json",
        f'{SB}{CB}{W0}{AB}{{"city": "Lima",}}{CE}{SE}',
        out("", [call(0, W0, "get_weather", '{"city": "Lima",}', valid_json=False)]),
    ),
    Fixture(
        "undeclared_keep",
        f"Cleaning up.{SB}{CB}functions.rm_rf:0{AB}{{}}{CE}{CB}functions.search:1{AB}{{}}{CE}{SE}",
        out(
            "Cleaning up.",
            [
                call(0, "functions.rm_rf:0", "rm_rf", "{}", declared=False),
                call(1, "functions.search:1", "search", "{}"),
            ],
        ),
    ),
    Fixture(
        "undeclared_drop",
        f"Cleaning up.{SB}{CB}functions.rm_rf:0{AB}{{}}{CE}{CB}functions.search:1{AB}{{}}{CE}{SE}",
        out(
            "Cleaning up.",
            [call(0, "functions.search:1", "search", "{}")],  # index stays contiguous
            ["dropped call 'functions.rm_rf:0' to undeclared tool 'rm_rf'"],
        ),
        policy="drop",
    ),
    Fixture("empty_section", f"Nothing to call.{SB}\n{SE}", out("Nothing to call.")),
    Fixture(
        "big_args",
        f"Writing the file.{SB}{CB}functions.x_y:0{AB}{BIG_ARGS}{CE}{SE}",
        out("Writing the file.", [call(0, "functions.x_y:0", "x_y", BIG_ARGS)]),
    ),
    Fixture(
        "text_after_section",
        f'{SB}{CB}{W0}{AB}{{"city": "Cairo"}}{CE}{SE}\nIt is sunny in Cairo.',
        out("\nIt is sunny in Cairo.", [call(0, W0, "get_weather", '{"city": "Cairo"}')]),
    ),
    Fixture(
        "angle_brackets_in_content",
        "if a<b and c <| d, print('<|im_end|>') or <|tool_calls|> or <|tool_call_beg x <",
        out("if a<b and c <| d, print('<|im_end|>') or <|tool_calls|> or <|tool_call_beg x <"),
    ),
    Fixture(
        "call_without_section",
        f"Sure. {CB}functions.search:0{AB}{{}}{CE} done",
        out(
            "Sure.  done",
            [call(0, "functions.search:0", "search", "{}")],
            ["tool call outside a tool-call section"],
        ),
    ),
]
SMALL = [f for f in FIXTURES if len(f.text) < 2000]


def stream(fx: Fixture, chunks: list[str]) -> tuple[list[Event], ParsedOutput]:
    parser = ToolCallParser(TOOLS, fx.policy)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish()
    return events, parser.result()


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def check_events(events: list[Event], result: ParsedOutput) -> None:
    """Events tell the same story as the result, with no markers and no empty pieces."""
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert content == result.content
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    dones = [e for e in events if isinstance(e, ToolCallDone)]
    assert [(s.index, s.id, s.name) for s in starts] == [
        (c.index, c.id, c.name) for c in result.tool_calls
    ]
    assert [(d.index, d.complete, d.valid_json, d.declared) for d in dones] == [
        (c.index, c.complete, c.valid_json, c.declared) for c in result.tool_calls
    ]
    for c in result.tool_calls:
        pieces = [
            e.text for e in events if isinstance(e, ToolCallArgumentsDelta) and e.index == c.index
        ]
        assert "".join(pieces) == c.arguments
    for e in events:
        text = getattr(e, "text", None)
        if text is not None:
            assert text, "empty text event"
            assert not any(m in text for m in MARKERS)
    assert all(d for d in to_openai_stream_deltas(events))


@pytest.mark.parametrize("fx", FIXTURES, ids=lambda f: f.name)
def test_fixture_one_shot(fx: Fixture) -> None:
    assert parse_tool_calls(fx.text, TOOLS, fx.policy) == fx.expected
    check_events(*stream(fx, [fx.text]))


@pytest.mark.parametrize("fx", FIXTURES, ids=lambda f: f.name)
def test_fixture_single_chars(fx: Fixture) -> None:
    events, result = stream(fx, list(fx.text))
    assert result == fx.expected
    check_events(events, result)


@pytest.mark.parametrize("fx", SMALL, ids=lambda f: f.name)
def test_every_two_way_split(fx: Fixture) -> None:
    for cut in range(len(fx.text) + 1):
        events, result = stream(fx, [fx.text[:cut], fx.text[cut:]])
        assert result == fx.expected, cut
        check_events(events, result)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data())
def test_random_chunking_matches_one_shot(data: st.DataObject) -> None:
    fx = data.draw(st.sampled_from(FIXTURES))
    cuts = data.draw(st.lists(st.integers(0, len(fx.text)), max_size=40))
    events, result = stream(fx, split_at(fx.text, cuts))
    assert result == fx.expected
    check_events(events, result)


def assert_no_marker(result: ParsedOutput) -> None:
    """No parsed field holds a complete marker, however the markers were mangled."""
    fields = [result.content]
    for c in result.tool_calls:
        fields += [c.id, c.name, c.arguments]
    for text in fields:
        assert not any(m in text for m in MARKERS), text


# Random interleavings of markers, marker fragments that join into markers when something
# between them is removed, JSON fragments and text: whatever the parser makes of them, it
# never raises, no field holds a marker, and streaming agrees with the one-shot parse.
SIMPLE = st.sampled_from(
    [*MARKERS, "<", "<|", "|>", "<|tool_ca", "functions.f:0", "f:1", "functions.g", ":",
     '{"a": 1}', '{"q": "', '"}', " ", "\n", "x", "é", "{", "}"]
)  # fmt: skip


@st.composite
def split_marker(draw: st.DrawFn) -> str:
    """A marker cut in two around other markers: removing those must not rejoin it."""
    marker = draw(st.sampled_from(MARKERS))
    cut = draw(st.integers(1, len(marker) - 1))
    between = draw(st.lists(st.sampled_from(MARKERS), min_size=1, max_size=2))
    return marker[:cut] + "".join(between) + marker[cut:]


PIECES = st.one_of(SIMPLE, split_marker())
FUZZ = settings(max_examples=300, deadline=None, derandomize=True)


@FUZZ
@given(st.lists(PIECES, max_size=40), st.data())
def test_random_streams_agree(pieces: list[str], data: st.DataObject) -> None:
    text = "".join(pieces)
    fx = Fixture("random", text, parse_tool_calls(text, TOOLS))
    assert_no_marker(fx.expected)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=20))
    events, result = stream(fx, split_at(text, cuts))
    assert result == fx.expected
    check_events(events, result)


@FUZZ
@given(st.text(alphabet=st.sampled_from('<|>_abcegilnostu:.{}" \n'), max_size=120))
def test_random_text_never_leaks(text: str) -> None:
    """Text over the markers' own alphabet (so fragments meet at random) parses safely."""
    result = parse_tool_calls(text, TOOLS, "drop")
    assert_no_marker(result)
    _, streamed = stream(Fixture("random", text, result, "drop"), list(text))
    assert streamed == result


@FUZZ
@given(st.text(max_size=200), st.lists(st.integers(0, 200), max_size=10))
def test_any_text_parses(text: str, cuts: list[int]) -> None:
    """Input of any shape: never raises, never leaks a marker, streams as it parses whole."""
    result = parse_tool_calls(text, TOOLS, "drop")
    assert_no_marker(result)
    events, streamed = stream(Fixture("any", text, result, "drop"), split_at(text, cuts))
    assert streamed == result
    check_events(events, streamed)


@pytest.mark.parametrize("marker", MARKERS)
def test_every_marker_is_acted_on(marker: str) -> None:
    got = parse_tool_calls(f"a{marker}b")
    assert "<|" not in got.content and got.errors  # a stray marker here, or an open section


def test_arguments_stream_before_call_ends() -> None:
    parser = ToolCallParser(TOOLS)
    parser.feed(f"{SB}{CB}{W0}{AB}")
    assert parser.feed('{"city": ') == [ToolCallArgumentsDelta(0, '{"city":')]
    assert parser.feed('"Oslo"}') == [ToolCallArgumentsDelta(0, ' "Oslo"}')]


def test_several_calls_in_one_delta() -> None:
    parser = ToolCallParser(TOOLS)
    assert parser.feed("Hi") == [ContentDelta("Hi")]
    events = parser.feed(f"{SB}{CB}functions.a.b:0{AB}{{}}{CE}{CB}functions.x_y:1{AB}[1]{CE}{SE}")
    assert events == [
        ToolCallStart(0, "functions.a.b:0", "a.b"),
        ToolCallArgumentsDelta(0, "{}"),
        ToolCallDone(0, True, True, True),
        ToolCallStart(1, "functions.x_y:1", "x_y"),
        ToolCallArgumentsDelta(1, "[1]"),
        ToolCallDone(1, True, True, True),
    ]


def test_marker_prefix_held_then_released() -> None:
    parser = ToolCallParser()
    assert parser.feed("a <|tool_ca") == [ContentDelta("a ")]
    assert parser.feed("ts are fun") == [ContentDelta("<|tool_cats are fun")]


def test_undeclared_error_raises_at_start() -> None:
    parser = ToolCallParser(TOOLS, "error")
    parser.feed(f"{SB}{CB}functions.rm_rf:0")
    with pytest.raises(K2Error, match="'rm_rf'"):
        parser.feed(AB)
    with pytest.raises(K2Error, match="undeclared tool 'rm_rf'"):
        parse_tool_calls(f"{SB}{CB}functions.rm_rf:0{AB}{{}}{CE}{SE}", TOOLS, "error")


def test_declared_tools_pass_under_error_policy() -> None:
    fx = FIXTURES[1]
    assert parse_tool_calls(fx.text, TOOLS, "error") == fx.expected


def test_tools_none_counts_every_call_declared() -> None:
    got = parse_tool_calls(f"{SB}{CB}functions.rm_rf:0{AB}{{}}{CE}{SE}", None, "error")
    assert got.tool_calls == [call(0, "functions.rm_rf:0", "rm_rf", "{}")]


def test_bad_arguments() -> None:
    with pytest.raises(K2Error, match="undeclared must be"):
        ToolCallParser(undeclared="ignore")  # type: ignore[arg-type]
    with pytest.raises(K2Error, match=r"tools\[0\]"):
        ToolCallParser([{"type": "function", "function": {}}])
    parser = ToolCallParser()
    parser.finish()
    with pytest.raises(K2Error, match="after finish"):
        parser.feed("x")


@pytest.mark.parametrize(
    ("call_id", "parsed"),
    [
        ("functions.get_weather:0", ("get_weather", True)),
        ("functions.x.y-z_w:12", ("x.y-z_w", True)),
        ("functions.ns:tool:1", ("ns:tool", True)),
        ("get_weather:3", ("get_weather", False)),
        ("functions.get_weather", None),
        ("functions.get_weather.0", None),
        ("get_weather", None),
        ("functions.f:", None),
        ("functions.:0", None),
        ("functions.f:٣", None),  # Arabic-Indic digit: not ASCII
        ("functions.get weather:0", None),
        ("functions.a<b:0", None),
        ("", None),
    ],
)
def test_parse_call_id(call_id: str, parsed: tuple[str, bool] | None) -> None:
    assert parse_call_id(call_id) == parsed


def test_openai_message() -> None:
    assert to_openai_message(FIXTURES[1].expected) == {
        "role": "assistant",
        "content": "I'll check the weather in Beijing for you.",
        "tool_calls": [
            {
                "id": W0,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'},
            }
        ],
    }
    assert to_openai_message(out("")) == {"role": "assistant", "content": None}


def test_openai_stream_deltas() -> None:
    parser = ToolCallParser(TOOLS)
    events: list[Event] = []
    for chunk in ["Checking", f".{SB}{CB}{W0}{AB}", '{"city"', ': "Oslo"}', f"{CE}{SE}", ""]:
        events += parser.feed(chunk)
    events += parser.finish()
    assert to_openai_stream_deltas(events) == [
        {"content": "Checking"},
        {"content": "."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": W0,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]},
    ]
