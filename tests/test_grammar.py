"""The tool-call grammar: which requests are constrained, schema checks, xgrammar's measured
keyword support, masks that only let valid Kimi calls through, the compile cache, failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import xgrammar as xgr

from k2trt.chat.grammar import (
    ANNOTATIONS,
    ENFORCED,
    MARKERS,
    MAX_TOOLS,
    GrammarFailed,
    SchemaRejected,
    bounded_strings,
    check_schema,
    spec_for,
)
from k2trt.chat.grammar_engine import ToolGrammar, encoded_vocab
from k2trt.chat.toolcalls import parse_tool_calls
from k2trt.runtime.chat import ModelFiles, prefill_text
from k2trt.runtime.types import ChatRequest

IDS = dict(zip(MARKERS, range(100, 105), strict=True))
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"enum": ["x", "y"]}, "c": {"type": "boolean"}},
    "required": ["a", "b", "c"],
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


def tool(name: str, params: Any, strict: bool | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name, "parameters": params}
    if strict is not None:
        fn["strict"] = strict
    return {"type": "function", "function": fn}


@pytest.fixture(scope="module")
def files(tiny_ckpt: Path) -> ModelFiles:
    return ModelFiles.load(tiny_ckpt)


@pytest.fixture(scope="module")
def grammar(files: ModelFiles) -> ToolGrammar:
    return ToolGrammar(files.tokenizer, files.stop_token_ids, "auto")


# ---------------------------------------------------------------------------------------------
# Which requests are constrained


@pytest.mark.parametrize(
    ("tools", "choice", "mode"),
    [
        (TOOLS, "required", "off"),
        (TOOLS, "none", "auto"),
        (None, "auto", "auto"),
        ([tool("f", WEATHER, strict=False), tool("g", ADD, strict=False)], "auto", "auto"),
    ],
)
def test_unconstrained(tools: Any, choice: Any, mode: str) -> None:
    assert spec_for(tools, choice, mode, IDS) is None


def test_strict_false_everywhere_still_constrained_in_strict_mode() -> None:
    spec = spec_for([tool("f", WEATHER, strict=False)], "auto", "strict", IDS)
    assert spec is not None
    assert '"additionalProperties": true' in spec.tag  # f's arguments: any object


def test_key_follows_the_tool_set() -> None:
    a = spec_for(TOOLS, "required", "auto", IDS)
    b = spec_for(json.loads(json.dumps(TOOLS)), "required", "auto", IDS)
    c = spec_for(TOOLS[:1], "required", "auto", IDS)
    d = spec_for(TOOLS, "auto", "auto", IDS)
    assert a is not None and b is not None and c is not None and d is not None
    assert a.key == b.key
    assert len({a.key, c.key, d.key}) == 3


def test_markers_are_token_ids() -> None:
    spec = spec_for(TOOLS, "auto", "auto", IDS)
    assert spec is not None
    tag = json.loads(spec.tag)["format"]
    assert tag["trigger_tokens"] == [IDS["<|tool_calls_section_begin|>"]]
    assert sorted(tag["exclude_tokens"]) == [101, 102, 103, 104]
    assert "<|tool_call" not in spec.tag


# ---------------------------------------------------------------------------------------------
# Schema checks: 400s that name the tool


def test_unsupported_keyword_under_strict_names_tool_and_keyword() -> None:
    bad = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(SchemaRejected) as err:
        spec_for([tool("ok", WEATHER), tool("tagger", bad, strict=True)], "auto", "auto", IDS)
    assert str(err.value) == (
        "tools[1] (tagger): parameters.properties.tags: keyword 'uniqueItems' is not supported "
        "under strict (constrained decoding cannot enforce it)"
    )
    assert err.value.field == "tools"
    # the same schema without strict is relaxed, and refused again in server strict mode
    assert spec_for([tool("tagger", bad)], "auto", "auto", IDS) is not None
    with pytest.raises(SchemaRejected, match="uniqueItems"):
        spec_for([tool("tagger", bad)], "auto", "strict", IDS)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"type": "objekt"}, "tools[0] (f): parameters.type: 'objekt' is not a JSON type"),
        ({"required": "city"}, "tools[0] (f): parameters.required: must be an array"),
        ({"properties": []}, "tools[0] (f): parameters.properties: must be an object of schemas"),
        ({"enum": []}, "tools[0] (f): parameters.enum: must be a non-empty array"),
        ({"maxLength": 10**9}, "tools[0] (f): parameters.maxLength: expected an integer in"),
        ({"anyOf": [3]}, "tools[0] (f): parameters.anyOf[0]: a schema must be an object"),
    ],
)
def test_invalid_schema_names_the_tool(params: Any, message: str) -> None:
    with pytest.raises(SchemaRejected) as err:
        spec_for([tool("f", params)], "required", "auto", IDS)
    assert str(err.value).startswith(message)


def test_too_deep_is_refused() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(20):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(SchemaRejected, match="nested deeper than 16"):
        spec_for([tool("f", deep)], "required", "auto", IDS)


def test_too_many_tools_is_refused() -> None:
    many = [tool(f"t{i}", {"type": "object"}) for i in range(MAX_TOOLS + 1)]
    with pytest.raises(SchemaRejected, match=f"{MAX_TOOLS + 1} tools; .* at most {MAX_TOOLS}"):
        spec_for(many, "auto", "auto", IDS)
    assert spec_for(many[:MAX_TOOLS], "auto", "auto", IDS) is not None


def test_annotations_pass_strict() -> None:
    schema = {"type": "object", "title": "T", "description": "d", "x-vendor": 1, "$comment": "c"}
    check_schema(schema, "tools[0] (f)", strict=True)
    assert ANNOTATIONS.isdisjoint(ENFORCED)


# ---------------------------------------------------------------------------------------------
# The keyword table is measured: xgrammar refuses a violating instance of each ENFORCED one
# and accepts one for each keyword we refuse under strict. If xgrammar changes, this fails.

ENFORCED_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "type": ({"type": "integer"}, '"s"'),
    "enum": ({"enum": ["a", "b"]}, '"c"'),
    "const": ({"const": 3}, "4"),
    "properties": ({"type": "object", "properties": {"a": {"type": "integer"}}}, '{"a": "s"}'),
    "required": ({"type": "object", "properties": {"a": {}}, "required": ["a"]}, "{}"),
    "additionalProperties": (
        {"type": "object", "properties": {"a": {}}, "additionalProperties": False},
        '{"b": 1}',
    ),
    "patternProperties": (
        {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
        '{"xa": "s"}',
    ),
    "propertyNames": ({"type": "object", "propertyNames": {"pattern": "^a"}}, '{"b": 1}'),
    "minProperties": (
        {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1},
        "{}",
    ),
    "maxProperties": (
        {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 1},
        '{"a": 1, "b": 2}',
    ),
    "items": ({"type": "array", "items": {"type": "integer"}}, '["s"]'),
    "prefixItems": ({"type": "array", "prefixItems": [{"type": "integer"}]}, '["s"]'),
    "minItems": ({"type": "array", "minItems": 2}, "[1]"),
    "maxItems": ({"type": "array", "maxItems": 1}, "[1, 2]"),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, '"s"'),
    "minLength": ({"type": "string", "minLength": 3}, '"a"'),
    "maxLength": ({"type": "string", "maxLength": 1}, '"ab"'),
    "pattern": ({"type": "string", "pattern": "^[a-z]+$"}, '"A"'),
    "format": ({"type": "string", "format": "email"}, '"nope"'),
    "minimum": ({"type": "integer", "minimum": 3}, "1"),
    "maximum": ({"type": "integer", "maximum": 3}, "9"),
    "exclusiveMinimum": ({"type": "number", "exclusiveMinimum": 0}, "0"),
    "exclusiveMaximum": ({"type": "number", "exclusiveMaximum": 0}, "0"),
    "multipleOf": ({"type": "integer", "multipleOf": 3}, "4"),
    "$ref": (
        {
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/i"}},
            "$defs": {"i": {"type": "integer"}},
        },
        '{"a": "s"}',
    ),
}
REFUSED_UNDER_STRICT: dict[str, tuple[dict[str, Any], str]] = {
    "not": ({"not": {"type": "string"}}, '"x"'),
    "uniqueItems": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 1]"),
    "contains": ({"type": "array", "items": {"type": "integer"}, "contains": {"const": 5}}, "[1]"),
    "allOf": ({"allOf": [{"type": "integer", "minimum": 3}, {"maximum": 5}]}, "9"),
    "oneOf": ({"oneOf": [{"type": "integer", "minimum": 0}, {"maximum": 10}]}, "5"),
    "dependentRequired": (
        {"type": "object", "properties": {"a": {}, "b": {}}, "dependentRequired": {"a": ["b"]}},
        '{"a": 1}',
    ),
}


def _accepts(schema: dict[str, Any], text: str, grammar: ToolGrammar) -> bool:
    compiled = grammar._get_compiler().compile_json_schema(json.dumps(schema), strict_mode=False)
    matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
    return bool(matcher.accept_string(text) and matcher.is_terminated())


@pytest.mark.parametrize("keyword", sorted(ENFORCED_CASES))
def test_enforced_keyword_is_enforced(keyword: str, grammar: ToolGrammar) -> None:
    schema, violation = ENFORCED_CASES[keyword]
    assert keyword in ENFORCED
    assert not _accepts(schema, violation, grammar)


@pytest.mark.parametrize("keyword", sorted(REFUSED_UNDER_STRICT))
def test_refused_keyword_is_not_enforced(keyword: str, grammar: ToolGrammar) -> None:
    schema, violation = REFUSED_UNDER_STRICT[keyword]
    assert keyword not in ENFORCED
    assert _accepts(schema, violation, grammar)
    with pytest.raises(SchemaRejected, match=repr(keyword)):
        check_schema(schema, "tools[0] (f)", strict=True)


def test_every_enforced_keyword_is_measured() -> None:
    assert ENFORCED - set(ENFORCED_CASES) == {"$defs", "definitions"}  # containers for $ref


# ---------------------------------------------------------------------------------------------
# Masks: random logits, every output is a valid Kimi call


def _sample(grammar: ToolGrammar, tools: Any, choice: Any, seed: int, files: ModelFiles) -> str:
    factory = grammar.factory(tools, choice)
    assert factory is not None
    mask = factory.start()
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for _ in range(400):
        logits = torch.randn(files.tokenizer.vocab_size, generator=gen)
        mask.apply(logits)
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        mask.accept(token)
        out.append(token)
        if token in files.stop_token_ids:
            break
    assert out[-1] in files.stop_token_ids, "the grammar ended within 400 tokens"
    return files.tokenizer.decode(out[:-1], skip_special_tokens=True)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_random_logits_always_make_valid_calls(
    choice: Any, grammar: ToolGrammar, files: ModelFiles
) -> None:
    request = ChatRequest([], tools=TOOLS, tool_choice=choice)
    for seed in range(8):
        text = prefill_text(request) + _sample(grammar, TOOLS, choice, seed, files)
        parsed = parse_tool_calls(text, TOOLS)
        assert parsed.tool_calls and not parsed.errors, text
        for call in parsed.tool_calls:
            if not isinstance(choice, str):
                assert call.name == "add"
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


def test_auto_allows_text_then_ends(grammar: ToolGrammar, files: ModelFiles) -> None:
    text = _sample(grammar, TOOLS, "auto", 0, files)
    assert not any(m in text for m in MARKERS)


def test_markers_unreachable_inside_json_strings(grammar: ToolGrammar, files: ModelFiles) -> None:
    tok = files.tokenizer
    factory = grammar.factory(TOOLS, {"type": "function", "function": {"name": "get_weather"}})
    assert factory is not None
    mask = factory.start()
    for token in tok.encode('{"city": "ab'):
        mask.accept(token)
    logits = torch.zeros(tok.vocab_size)
    mask.apply(logits)
    assert all(logits[i] == float("-inf") for i in tok.tool_marker_ids.values())
    assert logits[tok.encode('"')[0]] == 0  # the string may close


def test_marker_table(files: ModelFiles) -> None:
    tok = files.tokenizer
    vocab = encoded_vocab(tok)
    assert vocab[tok.tool_marker_ids["<|tool_call_end|>"]] == b"\xff<|tool_call_end|>"
    assert vocab[tok.im_end_id] == b"" and vocab[5] == tok.token_bytes(5)


def test_cache_hits_and_misses(files: ModelFiles) -> None:
    grammar = ToolGrammar(files.tokenizer, files.stop_token_ids, "auto")
    first = grammar.factory(TOOLS, "required")
    again = grammar.factory(json.loads(json.dumps(TOOLS)), "required")
    grammar.factory(TOOLS, "auto")
    assert first is not None and again is not None
    assert first.compiled is again.compiled
    assert (grammar.stats.hits, grammar.stats.misses) == (1, 2)


# ---------------------------------------------------------------------------------------------
# Failures stay with their request


def test_compile_failure_names_the_tool(grammar: ToolGrammar) -> None:
    unsatisfiable = {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": 5, "maxLength": 2}},
    }
    with pytest.raises(SchemaRejected) as err:
        grammar.factory([TOOLS[0], tool("broken", unsatisfiable)], "required")
    assert str(err.value) == (
        "tools[1] (broken): parameters: minLength 5 is greater than maxLength 2"
    )
    assert grammar.factory(TOOLS, "required") is not None  # the compiler is still fine


def test_bad_pattern_names_the_tool(grammar: ToolGrammar) -> None:
    bad = {"type": "object", "properties": {"s": {"type": "string", "pattern": "[a-z"}}}
    with pytest.raises(SchemaRejected, match=r"^tools\[0\] \(p\): parameters: Regex parsing"):
        grammar.factory([tool("p", bad)], "auto")


def test_refused_token_fails_the_request(grammar: ToolGrammar, files: ModelFiles) -> None:
    factory = grammar.factory(TOOLS, "required")
    assert factory is not None
    mask = factory.start()
    with pytest.raises(GrammarFailed, match="token 5 is not allowed here"):
        mask.accept(5)
    assert factory.start().matcher.accept_token(
        files.tokenizer.tool_marker_ids["<|tool_call_begin|>"]
    )


def test_length_bounded_strings_keep_control_characters_out(grammar: ToolGrammar) -> None:
    # xgrammar 0.2.9 lets a raw U+0004 into a maxLength string (not valid JSON); our rewrite
    # to a pattern keeps it out. When the first assert fails, xgrammar fixed it upstream.
    schema = {"type": "string", "maxLength": 4}
    assert _accepts(schema, '"a\x04"', grammar)
    rewritten = bounded_strings(schema)
    assert not _accepts(rewritten, '"a\x04"', grammar)
    assert _accepts(rewritten, '"abcd"', grammar) and not _accepts(rewritten, '"abcde"', grammar)
    assert bounded_strings({"type": "string", "maxLength": 4, "format": "email"})["maxLength"] == 4


def test_a_tool_set_at_the_limit_compiles(files: ModelFiles) -> None:
    grammar = ToolGrammar(files.tokenizer, files.stop_token_ids)
    many = [tool(f"t{i}", WEATHER if i % 2 else ADD) for i in range(MAX_TOOLS)]
    factory = grammar.factory(many, "required")
    assert factory is not None and factory.spec.tools == MAX_TOOLS
    mask = factory.start()
    logits = torch.zeros(files.tokenizer.vocab_size)
    mask.apply(logits)  # only <|tool_call_begin|> may start a required section's first call
    assert (logits == 0).nonzero().flatten().tolist() == [
        files.tokenizer.tool_marker_ids["<|tool_call_begin|>"]
    ]


def test_a_name_declared_twice_is_refused() -> None:
    with pytest.raises(SchemaRejected, match=r"^tools\[1\] \(f\): a second tool of that name$"):
        spec_for([tool("f", ADD), tool("f", WEATHER)], "required", "auto", IDS)
