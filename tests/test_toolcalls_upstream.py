"""Our Kimi K2 tool-call parser against the cases upstream parsers test themselves on.

Each row is one upstream test (or one parametrized case of it): the model output as that test
feeds it (one chunk for a whole-output parse, several for a streaming test) and what that test
asserts about names, ids, arguments and content. `None` means the upstream test asserts
nothing about that field. Where we deliberately differ, the row says why (`differs`) and
holds OUR expectation; README "The chat layer" lists the differences. Beyond what upstream
asserts, every row also checks: streamed == one-shot, and no field holds a marker.

The sources below were read for their cases (inputs and asserted outputs), not copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from k2trt.chat.toolcalls import (
    MARKERS,
    ContentDelta,
    ParsedOutput,
    ToolCallParser,
    UndeclaredPolicy,
    parse_tool_calls,
)


@dataclass(frozen=True)
class Source:
    repo: str
    path: str
    commit: str


VLLM = Source(
    "vllm-project/vllm",
    "tests/tool_parsers/test_kimi_k2_tool_parser.py",
    "42fa4c096d406754b7e5c6d93835fe390487c8af",
)
SGLANG = Source(
    "sgl-project/sglang",
    "test/registered/function_call/test_function_call_parser.py",  # class TestKimiK2Detector
    "bc110721242b4fee18c4ddadd72cb0dd1e1bf34b",
)
TRTLLM = Source(
    "NVIDIA/TensorRT-LLM",
    "tests/unittest/llmapi/apps/test_tool_parsers.py",  # class TestKimiK2ToolParser
    "0563b7c7f6ce0d11e0b35165141a34797e81ed9d",
)
LLAMACPP = Source(
    "ggml-org/llama.cpp",
    "tests/test-chat.cpp",  # Kimi-K2-Thinking / moonshotai-Kimi-K2 peg_tester blocks
    "0042e2079d3428ba7af410df553202aa7fdf8d7a",
)
MOONSHOT = Source(
    "MoonshotAI/Kimi-K2",
    "docs/tool_call_guidance.md",  # "Manually Parsing Tool Calls": extract_tool_call_info
    "c6157be8531e1c52f5dfd3bb91a1275b089eac50",
)
K2VV = Source(
    "MoonshotAI/K2-Vendor-Verifier",
    "tool_calls_eval.py",  # extract_tool_call_info; README: ids like `serach:0` in history
    "0bc5061be1a7b5667c2ec71a546a6b1c9ff5af9a",
)

SB, SE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CB, AB, CE = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"

# (name, id or None, arguments or None): None where the upstream test does not assert it.
Call = tuple[str, str | None, str | None]


@dataclass(frozen=True)
class Case:
    source: Source
    test: str  # the upstream test function (and parametrize id)
    chunks: tuple[str, ...]  # the output as the upstream test feeds it
    calls: tuple[Call, ...]
    content: str | None = None  # the whole content, where asserted
    deltas: tuple[str | None, ...] = ()  # content produced by each chunk, where asserted
    absent: tuple[str, ...] = ()  # text the content must not contain
    noted: tuple[str, ...] = ()  # what `errors` must mention (what we drop, we say)
    tools: tuple[str, ...] | None = None  # declared tool names (None: nothing is checked)
    policy: UndeclaredPolicy = "keep"
    differs: str = ""  # why our expectation is not the upstream one ("" = it is)


def whole(text: str, **kw: object) -> dict[str, object]:
    return {"chunks": (text,), **kw}


WEATHER = '{"city": "Beijing"}'
PRETTY = '{\n  "name": "test",\n  "value": 123,\n  "nested": {\n    "key": "value"\n  }\n}'

CASES = [
    # -- vLLM: tests/tool_parsers/test_kimi_k2_tool_parser.py ------------------------------
    Case(
        VLLM,
        "test_extract_tool_calls_no_tools",
        **whole("This is a test"),
        calls=(),
        content="This is a test",
    ),
    Case(
        VLLM,
        "test_extract_tool_calls[tool_call_with_content_before]",
        **whole(
            f"I'll help you check the weather. {SB} {CB}\nfunctions.get_weather:0 {AB} "
            f"{WEATHER} {CE} {SE}"
        ),
        calls=(("get_weather", "functions.get_weather:0", WEATHER),),
        content="I'll help you check the weather. ",
    ),
    Case(
        VLLM,
        "test_extract_tool_calls[multi_tool_call_with_content_before]",
        **whole(
            f"I'll help you check the weather. {SB} {CB}\nfunctions.get_weather:0 {AB} "
            f"{WEATHER} {CE} {CB}\nfunctions.get_weather:1 {AB} "
            f'{{"city": "Shanghai"}} {CE} {SE}'
        ),
        calls=(
            ("get_weather", "functions.get_weather:0", WEATHER),
            ("get_weather", "functions.get_weather:1", '{"city": "Shanghai"}'),
        ),
        content="I'll help you check the weather. ",
    ),
    Case(
        VLLM,
        "test_extract_tool_calls[concatenated_tool_calls_bug_fix]",
        **whole(
            f"I'll get the weather and news for LA today. {SB}{CB}functions.get_weather:0"
            f'{AB}{{"latitude": 34.0522, "longitude": -118.2437}}{CE}'
            f'{CB}functions.get_news:1{AB}{{"content": "Los Angeles today"}}{CE}{SE}'
        ),
        calls=(
            (
                "get_weather",
                "functions.get_weather:0",
                '{"latitude": 34.0522, "longitude": -118.2437}',
            ),
            ("get_news", "functions.get_news:1", '{"content": "Los Angeles today"}'),
        ),
        content="I'll get the weather and news for LA today. ",
    ),
    Case(
        VLLM,
        "test_extract_tool_calls[three_concatenated_tool_calls]",
        **whole(
            f"I'll help you with multiple tasks. {SB}{CB}functions.get_weather:0{AB}"
            f'{{"city": "New York"}}{CE}{CB}functions.get_news:1{AB}'
            f'{{"topic": "technology"}}{CE}{CB}functions.send_email:2{AB}'
            f'{{"to": "user@example.com", "subject": "Daily Update"}}{CE}{SE}'
        ),
        calls=(
            ("get_weather", "functions.get_weather:0", '{"city": "New York"}'),
            ("get_news", "functions.get_news:1", '{"topic": "technology"}'),
            (
                "send_email",
                "functions.send_email:2",
                '{"to": "user@example.com", "subject": "Daily Update"}',
            ),
        ),
        content="I'll help you with multiple tasks. ",
    ),
    Case(
        VLLM,
        "test_extract_tool_calls[mixed_spacing_tool_calls]",
        **whole(
            f"Mixed spacing test. {SB} {CB} functions.test:0 {AB} {{}} {CE}"
            f"{CB}functions.test2:1{AB}{{}}{CE} {SE}"
        ),
        calls=(("test", "functions.test:0", "{}"), ("test2", "functions.test2:1", "{}")),
        content="Mixed spacing test. ",
    ),
    Case(
        VLLM,
        "test_extract_tool_calls[angle_brackets_in_json]",
        **whole(
            f"I need to process HTML content. {SB}{CB}functions.process_html:0{AB}"
            f'{{"html": "<div>content</div>", "text": "normal text"}}{CE}{SE}'
        ),
        calls=(
            (
                "process_html",
                "functions.process_html:0",
                '{"html": "<div>content</div>", "text": "normal text"}',
            ),
        ),
        content="I need to process HTML content. ",
    ),
    Case(
        VLLM,
        "test_extract_tool_calls[newlines_in_json]",
        **whole(
            f"I need to process formatted JSON. {SB}{CB}functions.process_data:0{AB}"
            f"{PRETTY}{CE}{SE}"
        ),
        calls=(("process_data", "functions.process_data:0", PRETTY),),
        content="I need to process formatted JSON. ",
    ),
    Case(
        VLLM,
        "test_extract_tool_calls_invalid_json",
        **whole(
            f"I'll help you check the weather. {SB} {CB}\nfunctions.invalid_get_weather:0 "
            f'{AB} {{"city": "Beijing" {CE} {CB}\nfunctions.valid_get_weather:1 {AB} '
            f'{{"city": "Shanghai"}} {CE} {SE}'
        ),
        calls=(("invalid_get_weather", None, None), ("valid_get_weather", None, None)),
    ),
    Case(
        VLLM,
        "test_extract_tool_calls_invalid_funcall",
        **whole(
            f"I'll help you check the weather. {SB} {CB}\nfunctions.invalid_get_weather.0 "
            f"{AB} {WEATHER} {CE} {CB}\nfunctions.valid_get_weather:1 {AB} "
            f'{{"city": "Shanghai"}} {CE} {SE}'
        ),
        calls=(("valid_get_weather", None, None),),
        noted=("call id 'functions.invalid_get_weather.0' is not functions.NAME:IDX",),
    ),
    Case(
        VLLM,
        "test_streaming_no_tool_calls",
        chunks=("This is just regular text", " without any tool calls."),
        calls=(),
        deltas=(None, " without any tool calls."),
    ),
    Case(
        VLLM,
        "test_token_leak_between_section_and_tool_begin",
        chunks=("I'll help you with that. ", SB, " spurious text ", CB),
        calls=(),
        deltas=("I'll help you with that. ", "", ""),
        absent=("spurious",),
        noted=("section dropped: 'spurious text '",),
    ),
    Case(
        VLLM,
        "test_split_markers_across_deltas",
        chunks=("<|tool_calls_sec", "tion_begin|> "),
        calls=(),
        deltas=("", ""),
    ),
    Case(
        VLLM,
        "test_reentry_to_reasoning_after_tool_section",
        chunks=(SB, SE, " More reasoning"),
        calls=(),
        deltas=("", "", " More reasoning"),
    ),
    Case(
        VLLM,
        "test_malformed_tool_section_recovery",
        chunks=(SB, "x" * 10000),
        calls=(),
        deltas=("", ""),
        differs="vLLM gives up on a section after 8192 chars and returns the text as content; "
        "we keep the section rule at any length: text outside a call is dropped, noted",
    ),
    Case(
        VLLM,
        "test_section_begin_noise_tool_begin_same_chunk",
        chunks=("Reasoning ", f"{SB} noise text {CB}"),
        calls=(),
        deltas=(None, ""),
        absent=("noise text",),
    ),
    Case(
        VLLM,
        "test_stream_ends_without_section_end_marker",
        chunks=(SB, " partial content"),
        calls=(),
        deltas=("", ""),
    ),
    Case(
        VLLM,
        "test_same_chunk_begin_and_end_markers",
        chunks=("Some reasoning ", SB + SE, " More reasoning"),
        calls=(),
        deltas=(None, "", " More reasoning"),
    ),
    Case(
        VLLM,
        "test_same_chunk_begin_content_end_markers",
        chunks=("Reasoning ", f"{SB}   {SE}", " Done"),
        calls=(),
        deltas=(None, None, " Done"),
    ),
    Case(
        VLLM,
        "test_tool_call_end_and_section_end_same_chunk",
        chunks=(
            "Let me help. ",
            SB,
            f'{CB}get_weather:0 {AB} {{"city": "Paris"}} {CE}{SE}',
            " Done",
        ),
        calls=(("get_weather", "get_weather:0", '{"city": "Paris"}'),),
        deltas=(None, None, None, " Done"),
        absent=(CE, SE),
    ),
    Case(
        VLLM,
        "test_streaming_tool_call_markers_not_leaked",
        chunks=(
            "I'll check the weather. ",
            SB,
            f'{CB} functions.get_weather:0 {AB} {{"city": "Tokyo"}} {CE}',
            SE,
            " Here's the result.",
        ),
        calls=(("get_weather", "functions.get_weather:0", '{"city": "Tokyo"}'),),
        content="I'll check the weather.  Here's the result.",
        absent=(*MARKERS, "get_weather", "Tokyo"),
    ),
    Case(
        VLLM,
        "test_streaming_multiple_tool_calls_not_leaked",
        chunks=(
            "I'll compare the weather. ",
            SB,
            f'{CB} get_weather:0 {AB} {{"city": "Tokyo"}} {CE}',
            f' {CB} get_weather:1 {AB} {{"city": "New York"}} {CE}',
            SE,
            " Here's the comparison.",
        ),
        calls=(
            ("get_weather", "get_weather:0", '{"city": "Tokyo"}'),
            ("get_weather", "get_weather:1", '{"city": "New York"}'),
        ),
        absent=("<|tool_call", "<|tool_calls_section", "get_weather", "Tokyo", "New York"),
    ),
    # -- SGLang: class TestKimiK2Detector ---------------------------------------------------
    Case(
        SGLANG,
        "test_single_tool_call",
        **whole(f'{SB}{CB}functions.get_weather:0{AB}{{"city": "Paris"}}{CE}{SE}'),
        calls=(("get_weather", None, '{"city": "Paris"}'),),
        content="",
    ),
    Case(
        SGLANG,
        "test_multiple_tool_calls",
        **whole(
            f'{SB}{CB}functions.get_weather:0{AB}{{"city": "Paris"}}{CE}'
            f'{CB}functions.get_tourist_attractions:1{AB}{{"city": "London"}}{CE}{SE}'
        ),
        calls=(
            ("get_weather", None, '{"city": "Paris"}'),
            ("get_tourist_attractions", None, '{"city": "London"}'),
        ),
        content="",
    ),
    Case(
        SGLANG,
        "test_streaming_multiple_tool_calls",
        chunks=(
            f"{SB}{CB}functions.get_weather:0{AB}{{",
            '"city": "Paris"',
            f"}}{CE}",
            f"{CB}functions.get_tourist_attractions:1{AB}{{",
            '"city": "London"',
            f"}}{CE}",
            SE,
        ),
        calls=(
            ("get_weather", None, '{"city": "Paris"}'),
            ("get_tourist_attractions", None, '{"city": "London"}'),
        ),
    ),
    Case(
        SGLANG,
        "test_tool_name_streaming",
        chunks=(
            f"{SB}{CB}functions.get_weather:0{AB}{{",
            '"city": "Paris"',
            "}",
            CE,
            f"{CB}functions.get_tourist_attractions:1{AB}{{",
        ),
        calls=(("get_weather", None, '{"city": "Paris"}'), ("get_tourist_attractions", None, None)),
    ),
    Case(
        SGLANG,
        "test_invalid_tool_call",
        **whole(f'invalid_tool:0{AB}{{"city": "Paris"}}{CE}{SE}'),
        calls=(),
        content='invalid_tool:0{"city": "Paris"}',
        differs="SGLang returns the text verbatim, markers included, as normal_text; we drop "
        "the stray markers (no marker ever reaches content) and keep the text around them",
    ),
    Case(
        SGLANG,
        "test_partial_tool_call",
        chunks=(f"{SB}{CB}functions.get_weather:0{AB}{{", '"city": "Paris"'),
        calls=(("get_weather", None, '{"city": "Paris"'),),
    ),
    # -- TensorRT-LLM: class TestKimiK2ToolParser (its cases follow SGLang's detector) -------
    Case(
        TRTLLM,
        "detect_and_parse_single_tool",
        **whole(f'Normal text{SB}{CB}functions.get_weather:0{AB}{{"location": "NYC"}}{CE}{SE}'),
        calls=(("get_weather", None, '{"location": "NYC"}'),),
        content="Normal text",
    ),
    Case(
        TRTLLM,
        "detect_and_parse_multiple_tools",
        **whole(
            f'{SB}{CB}functions.get_weather:0{AB}{{"location":"LA"}}{CE}\n'
            f'{CB}functions.search_web:0{AB}{{"query":"AI"}}{CE}{SE}'
        ),
        calls=(("get_weather", None, None), ("search_web", None, None)),
    ),
    Case(
        TRTLLM,
        "detect_and_parse_malformed_tool",
        **whole(f"{SB}{CB}functions.get_weather:0{AB}MALFORMED{CE}{SE}"),
        calls=(("get_weather", "functions.get_weather:0", "MALFORMED"),),
        differs="TensorRT-LLM and SGLang drop a call whose arguments are not a JSON object; "
        "vLLM returns every call (test_extract_tool_calls_invalid_json); we keep it, "
        "flagged valid_json=false",
    ),
    Case(
        TRTLLM,
        "test_parse_streaming_increment_complete_tool_call",
        chunks=(SB, f"{CB}functions.get_weather:0{AB}{{", f'"location":"SF"}}{CE}'),
        calls=(("get_weather", None, '{"location":"SF"}'),),
    ),
    Case(
        TRTLLM,
        "parse_streaming_increment_partial_bot_token",
        chunks=(f"{SB}<|tool_call_be",),
        calls=(),
        deltas=("",),
    ),
    Case(
        TRTLLM,
        "test_undefined_tool",
        **whole(f'{SB}{CB}functions.undefined_func:0{AB}{{"arg":"any value"}}{CE}{SE}'),
        calls=(),
        tools=("get_weather", "search_web"),
        policy="drop",
        differs="TensorRT-LLM always drops a call to an undeclared tool; for us that is the "
        "'drop' policy (the default, 'keep', returns it flagged declared=false)",
    ),
    # -- llama.cpp: tests/test-chat.cpp (reasoning cases left out: K2 Instruct has no <think>)
    Case(
        LLAMACPP,
        "Kimi-K2-Thinking: basic content only",
        **whole("Hello, world!\nWhat's up?"),
        calls=(),
        content="Hello, world!\nWhat's up?",
    ),
    Case(
        LLAMACPP,
        "Kimi-K2-Thinking: tool call with content",
        **whole(
            f"Hello, world!\nWhat's up?{SB}{CB}functions.special_function:0{AB}"
            f'{{"arg1": 1}}{CE}{SE}'
        ),
        calls=(("special_function", "functions.special_function:0", '{"arg1": 1}'),),
        content="Hello, world!\nWhat's up?",
    ),
    Case(
        LLAMACPP,
        "Kimi-K2-Thinking: python tool with multiline code",
        **whole(
            f"{SB}{CB}functions.python:0{AB}"
            '{"code": "def hello():\\n    print(\\"Hello, world!\\")\\n\\nhello()"}'
            f"{CE}{SE}"
        ),
        calls=(
            (
                "python",
                "functions.python:0",
                '{"code": "def hello():\\n    print(\\"Hello, world!\\")\\n\\nhello()"}',
            ),
        ),
        content="",
    ),
    Case(
        LLAMACPP,
        "Kimi-K2-Thinking: three tool calls",
        **whole(
            f'{SB}{CB}functions.special_function:0{AB}{{"arg1": 1}}{CE}'
            f'{CB}functions.python:1{AB}{{"code": "print(1)"}}{CE}'
            f'{CB}functions.html:2{AB}{{"markup": "<p>test</p>"}}{CE}{SE}'
        ),
        calls=(
            ("special_function", "functions.special_function:0", '{"arg1": 1}'),
            ("python", "functions.python:1", '{"code": "print(1)"}'),
            ("html", "functions.html:2", '{"markup": "<p>test</p>"}'),
        ),
    ),
    Case(
        LLAMACPP,
        "Kimi-K2-Thinking: partial tool call (streaming)",
        chunks=(f'{SB}{CB}functions.special_function:0{AB}{{"arg1": ',),
        calls=(("special_function", "functions.special_function:0", '{"arg1":'),),
        differs="llama.cpp keeps the trailing space of a cut-off argument ('{\"arg1\": '); we "
        "strip trailing whitespace of arguments",
    ),
    Case(
        LLAMACPP,
        "Kimi-K2-Thinking: calls without section or end markers",
        **whole(
            f'{CB}functions.special_function:0{AB}{{"arg1": 1}}'
            f'{CB}functions.python:1{AB}{{"code": "print(\'hey\')"}}'
        ),
        calls=(
            ("special_function", "functions.special_function:0", '{"arg1": 1}'),
            ("python", "functions.python:1", '{"code": "print(\'hey\')"}'),
        ),
        content="",
    ),
    Case(
        LLAMACPP,
        "Kimi-K2-Thinking: real life test - execute_command",
        **whole(
            f"{CB}functions.execute_command:0{AB}"
            '{"command": "ls -lah", "cwd": "/home/user/development/exllamav3", '
            '"timeout": 10}'
        ),
        calls=(
            (
                "execute_command",
                "functions.execute_command:0",
                '{"command": "ls -lah", "cwd": "/home/user/development/exllamav3", "timeout": 10}',
            ),
        ),
    ),
    Case(
        LLAMACPP,
        "moonshotai-Kimi-K2 / Kimi-K2-Instruct: single tool call",
        **whole(f'{SB}{CB}functions.special_function:0{AB}{{"arg1": 1}}{CE}{SE}'),
        calls=(("special_function", "functions.special_function:0", '{"arg1": 1}'),),
        content="",
    ),
    # -- Moonshot's reference extractor (guidance doc; K2-Vendor-Verifier's copy) ----------
    Case(
        MOONSHOT,
        "extract_tool_call_info: id and arguments stripped of whitespace",
        **whole(f"Let me check.{SB}{CB} functions.get_weather:0 \n{AB}\n {WEATHER} \n{CE}{SE}"),
        calls=(("get_weather", "functions.get_weather:0", WEATHER),),
    ),
    Case(
        MOONSHOT,
        "extract_tool_call_info: id must be [\\w.]+:\\d+",
        **whole(f"{SB}{CB}functions.get-weather:0{AB}{WEATHER}{CE}{SE}"),
        calls=(("get-weather", "functions.get-weather:0", WEATHER),),
        differs="the reference id pattern has no '-', so it skips this call; OpenAI function "
        "names allow '-', and vLLM's id pattern ([^<]+:\\d+) accepts it: we keep it",
    ),
    Case(
        K2VV,
        "extract_tool_call_info: id without 'functions.'",
        **whole(f"{SB}{CB}search:0{AB}{{}}{CE}{SE}"),
        calls=(("search", "search:0", "{}"),),
        noted=("lacks 'functions.'",),
        differs="the extractor cannot name it (split('.')[1]) and skips it; vLLM, SGLang and "
        "TensorRT-LLM accept NAME:IDX: we keep it and note it in errors",
    ),
]


def _tools(case: Case) -> list[dict[str, object]] | None:
    return None if case.tools is None else [{"function": {"name": n}} for n in case.tools]


def _stream(case: Case) -> tuple[list[str], ParsedOutput]:
    parser = ToolCallParser(_tools(case), case.policy)
    per_chunk = []
    for chunk in case.chunks:
        events = parser.feed(chunk)
        per_chunk.append("".join(e.text for e in events if isinstance(e, ContentDelta)))
    parser.finish()
    return per_chunk, parser.result()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.source.repo}:{c.test}")
def test_upstream_case(case: Case) -> None:
    per_chunk, streamed = _stream(case)
    assert streamed == parse_tool_calls("".join(case.chunks), _tools(case), case.policy)
    got = [(c.name, c.id, c.arguments) for c in streamed.tool_calls]
    assert [g[0] for g in got] == [w[0] for w in case.calls]
    for (_, got_id, got_args), (_, want_id, want_args) in zip(got, case.calls, strict=True):
        assert want_id is None or got_id == want_id
        assert want_args is None or got_args == want_args
    assert case.content is None or streamed.content == case.content
    for want, have in zip(case.deltas, per_chunk, strict=False):
        assert want is None or have == want
    for text in case.absent:
        assert text not in streamed.content
    for note in case.noted:
        assert any(note in e for e in streamed.errors), (note, streamed.errors)
    fields = [streamed.content]
    for c in streamed.tool_calls:
        fields += [c.id, c.name, c.arguments]
    assert not any(m in text for m in MARKERS for text in fields)


def test_every_source_has_cases() -> None:
    assert {c.source for c in CASES} == {VLLM, SGLANG, TRTLLM, LLAMACPP, MOONSHOT, K2VV}
