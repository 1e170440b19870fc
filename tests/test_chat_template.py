"""Chat templates: byte-for-byte agreement with transformers, our own rules, and the sandbox."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jinja2.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers.utils.chat_template_utils import render_jinja_template

from k2trt.chat.revisions import REVISION_NAMES, known_revision, release_template
from k2trt.chat.template import (
    ChatTemplate,
    builtin_template,
    chat_template_from_text,
    load_chat_template,
    render_chat,
    rewrite_tool_call_ids,
)
from k2trt.errors import K2Error

Messages = list[dict[str, Any]]
FIRST, OLD, LATEST = REVISION_NAMES

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Wetter für eine Stadt",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}}


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


TWO_CALLS: Messages = [
    {"role": "user", "content": "Weather in Berlin and Paris?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            call("call_a", "get_weather", '{"city": "Berlin"}'),
            call("call_b", "get_weather", {"city": "Paris"}),
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "content": "12°C"},
    {"role": "tool", "tool_call_id": "call_b", "content": "15°C"},
]

CONVERSATIONS: dict[str, tuple[Messages, list[dict[str, Any]] | None]] = {
    "no_system": ([{"role": "user", "content": "hi"}], None),
    "empty": ([], None),
    "system_multi_turn": (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?\nthanks"},
        ],
        None,
    ),
    "names": (
        [
            {"role": "system", "content": "Moderate.", "name": "rules"},
            {"role": "user", "content": "hello", "name": "alice"},
            {"role": "assistant", "content": "hey", "name": "kimi"},
            {"role": "user", "content": "yo", "name": ""},
        ],
        None,
    ),
    "list_content": (
        [
            {"role": "system", "content": [{"type": "text", "text": "Sys."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "part one, "},
                    {"type": "text", "text": "two"},
                ],
            },
        ],
        None,
    ),
    "empty_content": (
        [
            {"role": "user", "content": ""},
            {"role": "assistant", "content": "", "tool_calls": [call("c1", "now", "{}")]},
            {"role": "tool", "tool_call_id": "c1", "content": ""},
        ],
        [TIME_TOOL],
    ),
    "none_content": (
        [
            {"role": "user", "content": "time?"},
            {"role": "assistant", "content": None, "tool_calls": [call("c1", "now", "{}")]},
            {"role": "tool", "tool_call_id": "c1", "content": "noon"},
        ],
        [TIME_TOOL],
    ),
    "tools_two_calls": (TWO_CALLS, [WEATHER_TOOL, TIME_TOOL]),
    "tools_multi_turn_reused_ids": (
        [
            *TWO_CALLS,
            {"role": "assistant", "content": "Berlin 12, Paris 15."},
            {"role": "user", "content": "And the time?"},
            {"role": "assistant", "content": "", "tool_calls": [call("call_a", "now", "{}")]},
            {"role": "tool", "tool_call_id": "call_a", "content": "12:00"},
        ],
        [WEATHER_TOOL, TIME_TOOL],
    ),
    "empty_tools_list": ([{"role": "user", "content": "hi"}], []),
    "images": (
        [{"role": "user", "content": [IMAGE, {"type": "text", "text": "what is it?"}]}],
        None,
    ),
    "special_text": (
        [{"role": "user", "content": '{{ not jinja }} {% raw %} <|im_end|> "quotes" \\ 日本'}],
        None,
    ),
}


def hf_render(template: str, messages: Messages, tools: Any = None, **kwargs: Any) -> str:
    """transformers' own rendering, with apply_chat_template's None-dropping first."""
    cleaned = [{k: v for k, v in m.items() if v is not None} for m in messages]
    # Annotated `-> str` upstream, but it returns (rendered chats, generation indices).
    result: Any = render_jinja_template(
        conversations=[cleaned], tools=tools, chat_template=template, **kwargs
    )
    return str(result[0][0])


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("revision", REVISION_NAMES)
def test_renderer_matches_transformers(
    revision: str, name: str, add_generation_prompt: bool
) -> None:
    messages, tools = CONVERSATIONS[name]
    template = builtin_template(revision)
    ours = render_chat(template, messages, tools, add_generation_prompt=add_generation_prompt)
    theirs = hf_render(template, messages, tools, add_generation_prompt=add_generation_prompt)
    assert ours.text == theirs
    assert not ours.mutating
    assert ours.template_name == revision


# ---------------------------------------------------------------------------------------------
# Our templates against the prompts Moonshot's published revisions render (tests/data)

FIXTURES = Path(__file__).parent / "data" / "kimi_templates"
FIXTURE_CASES = json.loads((FIXTURES / "conversations.json").read_text(encoding="utf-8"))[
    "conversations"
]


def fixture(revision: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{revision}.json").read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("revision", REVISION_NAMES)
def test_fixture_provenance(revision: str) -> None:
    data = fixture(revision)
    assert data["revision"] == revision
    assert set(data["source"]) >= {"repo", "path", "commit", "sha256"}
    assert len(data["source"]["commit"]) == 40 and len(data["source"]["sha256"]) == 64
    assert set(data["by_conversation"]) == {case["id"] for case in FIXTURE_CASES}


@pytest.mark.parametrize("revision", REVISION_NAMES)
def test_renders_like_the_published_revision(revision: str) -> None:
    """Every generated conversation, generation prompt off and on, byte for byte."""
    template = builtin_template(revision)
    expected = fixture(revision)["by_conversation"]
    compared = 0
    for case in FIXTURE_CASES:
        for generation, want in zip((False, True), expected[case["id"]], strict=True):
            args = (template, case["messages"], case["tools"])
            if isinstance(want, dict):  # the published template fails here: so must ours
                with pytest.raises(K2Error, match=f"chat template {revision} cannot render"):
                    render_chat(*args, add_generation_prompt=generation)
                continue
            got = render_chat(*args, add_generation_prompt=generation).text
            assert got == want, (case["id"], generation)
            compared += 1
    assert compared >= 2 * (len(FIXTURE_CASES) - 2)


def test_fixture_set_covers_the_shapes() -> None:
    """The generated set holds every conversation shape the revisions differ on."""
    messages = [m for case in FIXTURE_CASES for m in case["messages"]]
    parts = [p for m in messages if isinstance(m.get("content"), list) for p in m["content"]]
    assert any(m["role"] == "system" for m in messages)
    assert any(
        case["messages"] and case["messages"][0]["role"] != "system" for case in FIXTURE_CASES
    )
    assert any(p.get("type") == "text" for p in parts) and any("image_url" in p for p in parts)
    assert any(m.get("tool_calls") for m in messages) and any(m["role"] == "tool" for m in messages)
    assert any(m.get("name") for m in messages)
    assert any("<|im_end|>" in json.dumps(m, ensure_ascii=False) for m in messages)
    assert any(any(ord(c) > 127 for c in json.dumps(m, ensure_ascii=False)) for m in messages)
    assert any(case["tools"] for case in FIXTURE_CASES)


def test_revisions_differ_where_documented() -> None:
    image_then_text = [{"role": "user", "content": [IMAGE, {"type": "text", "text": "?"}]}]
    first, tools_rev, latest = (
        render_chat(builtin_template(r), image_then_text).text for r in REVISION_NAMES
    )
    media = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"
    assert f"{media}?<|im_end|>" in first
    assert f"{media}\n?<|im_end|>" in tools_rev and f"{media}\n?<|im_end|>" in latest
    assert "You are a helpful assistant<|im_end|>" in first
    assert "You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>" in latest
    named = [{"role": "user", "content": "hi", "name": "alice"}]
    assert (
        "<|im_user|>user<|im_middle|>"
        in render_chat(builtin_template(REVISION_NAMES[1]), named).text
    )
    assert (
        "<|im_user|>alice<|im_middle|>"
        in render_chat(builtin_template(REVISION_NAMES[2]), named).text
    )


# The tool-calling format, spelled out once (0905).
LATEST_TWO_CALLS = (
    "<|im_system|>tool_declare<|im_middle|>\n  # Tools\n  "
    '[{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]'
    "<|im_end|>"
    "<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI."
    "<|im_end|>"
    "<|im_user|>user<|im_middle|>Weather in Berlin and Paris?<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|>Checking.<|tool_calls_section_begin|>"
    '<|tool_call_begin|>call_a<|tool_call_argument_begin|>{"city": "Berlin"}<|tool_call_end|>'
    '<|tool_call_begin|>call_b<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
    "<|tool_calls_section_end|><|im_end|>"
    "<|im_system|>tool<|im_middle|>## Return of call_a\n    12°C<|im_end|>"
    "<|im_system|>tool<|im_middle|>## Return of call_b\n    15°C<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|>"
)


def test_literal_prompt() -> None:
    template = builtin_template("kimi-k2-instruct-0905")
    assert render_chat(template, TWO_CALLS, [TIME_TOOL]).text == LATEST_TWO_CALLS


def test_flatten_content_repairs_list_content_next_to_calls() -> None:
    # Both tool-calling revisions print an assistant's list content as its Python repr when
    # the message also has tool calls; flatten_content joins all-text lists first.
    messages = [
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}], "tool_calls": []},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}],
         "tool_calls": [call("c", "now", "{}")]},
    ]  # fmt: skip
    template = builtin_template("kimi-k2-instruct-0905")
    assert "<|im_middle|>[{'type': 'text', 'text': 'ok'}]<|tool_calls" in (
        render_chat(template, messages).text
    )
    fixed = render_chat(template, messages, flatten_content=True).text
    assert "<|im_middle|>ok<|tool_calls_section_begin|>" in fixed


def test_drop_names() -> None:
    messages = [{"role": "user", "content": "hi", "name": "alice"}]
    template = builtin_template("kimi-k2-instruct-0905")
    assert "<|im_user|>alice<|im_middle|>" in render_chat(template, messages).text
    dropped = render_chat(template, messages, drop_names=True).text
    assert "<|im_user|>user<|im_middle|>" in dropped


# ---------------------------------------------------------------------------------------------
# Recognition


@pytest.mark.parametrize("revision", REVISION_NAMES)
def test_known_revision(revision: str) -> None:
    text = builtin_template(revision)
    assert known_revision(text) == revision
    assert chat_template_from_text(text).name == revision
    # Layout that never reaches the prompt does not change what it is.
    assert known_revision("{# a copy #}\n" + text + "\n") == revision
    assert chat_template_from_text(text + " ").name == revision


def test_unknown_templates_are_custom() -> None:
    latest = builtin_template("kimi-k2-instruct-0905")
    changed = latest.replace("created by Moonshot AI.", "created by someone else.")
    assert known_revision(changed) == "custom"
    assert known_revision(latest.replace("## Return of ", "## Result of ")) == "custom"
    assert known_revision("{{ raise_exception('no') }}") == "custom"
    assert known_revision("{% if %}") == "custom"
    with pytest.raises(K2Error, match="unknown chat template revision 'kimi-v3'"):
        builtin_template("kimi-v3")


def test_release_templates() -> None:
    assert release_template("0711") == builtin_template("kimi-k2-instruct-0711-tools")
    assert release_template("0905") == builtin_template("kimi-k2-instruct-0905")
    with pytest.raises(K2Error, match="unknown release '0999'"):
        release_template("0999")


# ---------------------------------------------------------------------------------------------
# Conversations a template cannot render: one line naming the message and field


def test_failure_names_message_and_field() -> None:
    bad = [*TWO_CALLS[:2], {"role": "assistant", "content": "", "tool_calls": [{"id": "x"}]}]
    template = builtin_template("kimi-k2-instruct-0905")
    with pytest.raises(K2Error) as info:
        render_chat(template, bad)
    assert str(info.value) == (
        "messages[2].tool_calls[0]: chat template kimi-k2-instruct-0905 cannot render this: "
        "UndefinedError: 'dict object' has no attribute 'function'"
    )
    with pytest.raises(K2Error, match=r"^messages\[1\]\.content: .*'int' object is not iterable"):
        render_chat(template, [{"role": "user", "content": "a"}, {"role": "user", "content": 7}])


def test_failure_in_tools_names_tools() -> None:
    template = (
        "{% for t in tools %}{{ t.function.name.upper() }}{% endfor %}{{ messages | length }}"
    )
    with pytest.raises(K2Error, match=r"^tools: chat template custom cannot render this"):
        render_chat(template, [{"role": "user", "content": "x"}], [{"function": 3}])


def test_failure_without_a_culprit_keeps_the_template_error() -> None:
    with pytest.raises(K2Error, match=r"^chat template custom: TemplateError: always$"):
        render_chat("{{ raise_exception('always') }}", [{"role": "user", "content": "x"}])


# ---------------------------------------------------------------------------------------------
# rewrite_tool_ids

REUSED_IDS = CONVERSATIONS["tools_multi_turn_reused_ids"][0]


def test_rewrite_tool_ids_exact() -> None:
    before = copy.deepcopy(REUSED_IDS)
    rewritten = rewrite_tool_call_ids(REUSED_IDS)
    assert before == REUSED_IDS  # a copy, never the caller's data
    ids = [c["id"] for m in rewritten for c in m.get("tool_calls", [])]
    answers = [m["tool_call_id"] for m in rewritten if m["role"] == "tool"]
    assert ids == ["functions.get_weather:0", "functions.get_weather:1", "functions.now:2"]
    # The reused "call_a" answers the latest call that carried it.
    assert answers == ["functions.get_weather:0", "functions.get_weather:1", "functions.now:2"]
    assert [m["content"] for m in rewritten] == [m["content"] for m in REUSED_IDS]


def test_rewrite_tool_ids_in_rendering() -> None:
    template = builtin_template("kimi-k2-instruct-0905")
    plain = render_chat(template, REUSED_IDS).text
    rewritten = render_chat(template, REUSED_IDS, rewrite_tool_ids=True).text
    assert "<|tool_call_begin|>call_a" in plain and "Return of call_a" in plain
    assert "<|tool_call_begin|>call_a" not in rewritten and "Return of call_a" not in rewritten
    assert rewritten == render_chat(template, rewrite_tool_call_ids(REUSED_IDS)).text
    assert "## Return of functions.now:2\n    12:00" in rewritten


def test_rewrite_tool_ids_needs_names() -> None:
    bad = [{"role": "assistant", "tool_calls": [{"id": "x", "function": {"arguments": "{}"}}]}]
    with pytest.raises(K2Error, match=r"messages\[0\]\.tool_calls\[0\]\.function\.name"):
        rewrite_tool_call_ids(bad)


# ---------------------------------------------------------------------------------------------
# Environment features: each one rendered by transformers and by us

FEATURES = """\
{% set ns = namespace(n=0) %}
{% for m in messages %}
  {% if m.role == 'system' %}{% continue %}{% endif %}
  {% if loop.index > 3 %}{% break %}{% endif %}
  {% set ns.n = ns.n + 1 %}
  {% generation %}[{{ m.role }}:{{ m.content }}]{% endgeneration %}
{% endfor %}
n={{ ns.n }} {{ dict(a=1, b=[2]) | tojson }} {{ dict.fromkeys(['k']) | tojson }}
{{ tools | tojson(indent=2, sort_keys=true) }}
{{ {'é': 'ü'} | tojson(ensure_ascii=true) }} {{ {'x': '<&>'} | tojson }}
{{ tools | tojson(separators=(',', ':')) }}
{{ bos_token }}|{{ documents }}|{{ extra.nested[0] }}|{{ strftime_now('%Y') | length }}
{% if messages[-1].thinking %}thinking={{ messages[-1].thinking }}{% endif %}
{% if add_generation_prompt %}GO{% endif %}
"""


def test_environment_features_match() -> None:
    messages: Messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1", "reasoning": "because"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2", "reasoning_content": "hmm"},
    ]
    kwargs: dict[str, Any] = {"bos_token": "[BOS]", "extra": {"nested": ("t",)}}
    ours = render_chat(
        FEATURES, messages, [WEATHER_TOOL], documents=[{"title": "d", "text": "t"}], **kwargs
    )
    theirs = hf_render(
        FEATURES,
        messages,
        [WEATHER_TOOL],
        documents=[{"title": "d", "text": "t"}],
        add_generation_prompt=True,
        **kwargs,
    )
    assert ours.text == theirs
    assert "thinking=hmm" in ours.text and "[user:u1]" in ours.text
    assert ours.template_name == "custom"


def test_raise_exception() -> None:
    template = "{{ raise_exception('no\\nthanks') }}"
    with pytest.raises(jinja2.exceptions.TemplateError):
        hf_render(template, [])
    with pytest.raises(K2Error, match=r"^chat template custom: TemplateError: no thanks$"):
        render_chat(template, [])


def test_syntax_error_names_line_and_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jinja"
    path.write_text("ok\n{% if %}\n", encoding="utf-8")
    with pytest.raises(K2Error, match=r"broken\.jinja: chat template custom: line 2: ") as info:
        render_chat(load_chat_template(path), [])
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# A mutating template, in the style of llama.cpp's Kimi v2 copies (test-only; never shipped)

MUTATING_V2 = """\
{%- set issued = [] -%}
{%- if messages and messages[0].role == 'system' -%}
    {%- set system = messages.pop(0) -%}
{%- else -%}
    {%- set system = {'role': 'system', 'content': 'You are Kimi.'} -%}
{%- endif -%}
{{- '<|im_system|>system<|im_middle|>' ~ system.content ~ '<|im_end|>' -}}
{%- for message in messages -%}
    {%- set tags = {'user': '<|im_user|>', 'assistant': '<|im_assistant|>'} -%}
    {{- tags.get(message.role, '<|im_system|>') -}}
    {{- message.role ~ '<|im_middle|>' ~ message.content -}}
    {%- for c in message.tool_calls or [] -%}
        {%- set _ = issued.append('functions.' ~ c.function.name ~ ':' ~ issued | length) -%}
        {{- '<|tool_call_begin|>' ~ issued[-1] ~ '<|tool_call_argument_begin|>' -}}
        {{- c.function.arguments ~ '<|tool_call_end|>' -}}
    {%- endfor -%}
    {%- if message.tool_calls -%}{%- set _ = message.tool_calls.pop() -%}{%- endif -%}
    {{- '<|im_end|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_assistant|>assistant<|im_middle|>' -}}{%- endif -%}
"""


def test_mutating_template() -> None:
    messages = [{"role": "system", "content": "Sys."}, *TWO_CALLS]
    before = copy.deepcopy(messages)
    with pytest.raises(jinja2.exceptions.SecurityError):
        hf_render(MUTATING_V2, messages, add_generation_prompt=True)
    rendered = render_chat(MUTATING_V2, messages)
    assert rendered.mutating
    assert messages == before  # the template popped from copies only
    assert rendered.text.startswith("<|im_system|>system<|im_middle|>Sys.<|im_end|><|im_user|>user")
    assert "functions.get_weather:1<|tool_call_argument_begin|>" in rendered.text
    assert rendered.text.count("<|im_system|>system") == 1
    # Rendering twice gives the same text: each attempt starts from fresh copies.
    assert render_chat(MUTATING_V2, messages).text == rendered.text


# ---------------------------------------------------------------------------------------------
# Sandbox

HOSTILE = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",  # transformers renders "" here; we refuse outright
    "{{ cycler.__init__.__globals__ }}",
    "{{ messages.__class__.__subclasses__() }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{% set ns = namespace(_secret=1) %}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}",
    "{{ raise_exception.__globals__ }}",
    "{% set _ = messages.append(1) %}{{ messages.__len__() }}",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_sandbox_refuses(template: str, tmp_path: Path) -> None:
    path = tmp_path / "evil.jinja"
    path.write_text(template, encoding="utf-8")
    with pytest.raises(K2Error, match=r"evil\.jinja: chat template custom: refused unsafe"):
        render_chat(load_chat_template(path), [{"role": "user", "content": "x"}])
    with pytest.raises(K2Error, match=r"^chat template custom: refused unsafe"):
        render_chat(template, [{"role": "user", "content": "x"}])


def test_dict_keys_that_look_private_are_plain_data() -> None:
    # Only real Python attributes are refused; a message key is just data.
    template = "{{ messages[0]._meta }}"
    assert render_chat(template, [{"_meta": "ok"}]).text == hf_render(template, [{"_meta": "ok"}])


# ---------------------------------------------------------------------------------------------
# Loading


def test_builtin_template_files() -> None:
    for revision in REVISION_NAMES:
        assert builtin_template(revision).startswith("{#- " + revision + ":")


def test_load_jinja_file(tmp_path: Path) -> None:
    path = tmp_path / "kimi.jinja"
    path.write_text(builtin_template(OLD), encoding="utf-8")
    loaded = load_chat_template(path)
    assert (loaded.name, loaded.source) == (OLD, str(path))
    assert loaded == chat_template_from_text(builtin_template(OLD), str(path))


def write_config(directory: Path, chat_template: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer_config.json"
    config = {"tokenizer_class": "TikTokenTokenizer"}
    if chat_template is not ...:
        config["chat_template"] = chat_template
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_load_directory_prefers_jinja_file(tmp_path: Path) -> None:
    write_config(tmp_path, "from config")
    (tmp_path / "chat_template.jinja").write_text(builtin_template(FIRST), encoding="utf-8")
    loaded = load_chat_template(tmp_path)
    assert (loaded.name, loaded.source) == (FIRST, str(tmp_path / "chat_template.jinja"))


def test_load_config_string(tmp_path: Path) -> None:
    config = write_config(tmp_path, "{{ messages | length }}")
    for where in (tmp_path, config):
        loaded = load_chat_template(where)
        assert (loaded.text, loaded.name, loaded.source) == (
            "{{ messages | length }}",
            "custom",
            str(config),
        )


def test_load_config_list_picks_default(tmp_path: Path) -> None:
    entries = [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": builtin_template(LATEST)},
    ]
    assert load_chat_template(write_config(tmp_path, entries)).name == LATEST


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            [{"name": "tool_use", "template": "t"}],
            r'chat_template list has no "default" entry \(has: tool_use\)',
        ),
        (42, "chat_template must be a string or a list"),
        ([{"name": "default"}], "chat_template must be a string or a list"),
    ],
)
def test_load_config_bad_values(tmp_path: Path, value: Any, message: str) -> None:
    config = write_config(tmp_path, value)
    with pytest.raises(K2Error, match=rf"tokenizer_config\.json: {message}"):
        load_chat_template(tmp_path)
    with pytest.raises(K2Error, match=message) as info:
        load_chat_template(config)
    assert str(info.value).startswith(f"{config}: ")


@pytest.mark.parametrize("chat_template", [..., None])
def test_load_falls_back_to_builtin_0905(tmp_path: Path, chat_template: Any) -> None:
    write_config(tmp_path / "ckpt", chat_template)
    loaded = load_chat_template(tmp_path / "ckpt")
    assert loaded.name == LATEST
    assert loaded.text == builtin_template(LATEST)
    assert loaded.source == f"built-in {LATEST} (no chat template in {tmp_path / 'ckpt'})"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_chat_template(empty).source.startswith(f"built-in {LATEST} (no chat template")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(K2Error, match="no such file or directory"):
        load_chat_template(tmp_path / "missing")
    bad_json = tmp_path / "tokenizer_config.json"
    bad_json.write_text("{", encoding="utf-8")
    with pytest.raises(K2Error, match=r"tokenizer_config\.json: tokenizer config is not valid"):
        load_chat_template(tmp_path)
    other = tmp_path / "model.txt"
    other.write_text("x", encoding="utf-8")
    with pytest.raises(K2Error, match=r"expected a \.jinja template"):
        load_chat_template(other)


def test_render_reports_template_identity() -> None:
    chat = ChatTemplate("{{ messages | length }}", "mine", "abc", "inline")
    rendered = render_chat(chat, [{"role": "user", "content": "x"}])
    assert (rendered.text, rendered.template_name, rendered.template_sha256) == ("1", "mine", "abc")


@pytest.mark.parametrize("bad", ["not a list", [["nested"]], [{"role": "user"}, 3]])
def test_bad_messages(bad: Any) -> None:
    with pytest.raises(K2Error, match="messages"):
        render_chat(builtin_template(LATEST), bad)


def test_bad_tools() -> None:
    with pytest.raises(K2Error, match=r"tools\[0\]: tool must be a JSON schema object"):
        render_chat(builtin_template(LATEST), [], [print])


# ---------------------------------------------------------------------------------------------
# Random conversations: still byte-for-byte

text = st.text(max_size=12)
tool_call = st.builds(
    call,
    st.text(min_size=1, max_size=6),
    st.sampled_from(["get_weather", "now"]),
    st.one_of(text, st.dictionaries(st.text(max_size=4), st.integers() | text, max_size=2)),
)
message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user"]), "content": text}, optional={"name": text}
    ),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": st.one_of(text, st.none())},
        optional={"tool_calls": st.lists(tool_call, max_size=3)},
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "tool_call_id": st.text(min_size=1, max_size=6), "content": text}
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), max_size=2),
        }
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(message, max_size=6),
    tools=st.sampled_from([None, [WEATHER_TOOL], [TIME_TOOL, WEATHER_TOOL]]),
    revision=st.sampled_from(REVISION_NAMES),
    add_generation_prompt=st.booleans(),
)
def test_random_conversations_match(
    messages: Messages, tools: Any, revision: str, add_generation_prompt: bool
) -> None:
    template = builtin_template(revision)
    kwargs: dict[str, Any] = {"add_generation_prompt": add_generation_prompt}
    assert render_chat(template, messages, tools, **kwargs).text == hf_render(
        template, messages, tools, **kwargs
    )
