"""The Kimi K2 chat-template revisions we ship, and recognising one in a checkpoint.

Moonshot has published three revisions of the K2-Instruct chat template. Our templates
(`templates/*.jinja`) are written by us and render byte for byte what each revision renders;
`tests/data/kimi_templates/` holds the prompts transformers rendered from the published ones,
with where each came from.

- `kimi-k2-instruct-0711`: Kimi-K2-Instruct as first published (July 2025). Fixed role names,
  no tool-call rendering, tool results without a header, default system prompt
  "You are a helpful assistant".
- `kimi-k2-instruct-0711-tools`: the tool-calling revision of Kimi-K2-Instruct (the template
  that checkpoint carries since summer 2025). Tool calls with the client's ids, results as
  "## Return of ID", default system prompt "You are Kimi, an AI assistant created by Moonshot AI."
- `kimi-k2-instruct-0905`: Kimi-K2-Instruct-0905. As above, plus a "# Tools" heading in the
  tool declaration and a message's `name` in place of its role.

A checkpoint's template is recognised by what it renders: a fixed set of probe conversations
is rendered with it and with each revision, and it is that revision when every prompt is the
same (so a copy that differs only in layout, comments or a trailing newline is still
recognised); otherwise it is `custom`.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from importlib import resources
from typing import Any

from k2trt.errors import K2Error


@dataclasses.dataclass(frozen=True)
class Revision:
    """One published template revision: its name, our file for it, what sets it apart."""

    name: str
    file: str
    summary: str


REVISIONS = (
    Revision(
        "kimi-k2-instruct-0711",
        "kimi_k2_instruct_0711.jinja",
        "Kimi-K2-Instruct as first published (July 2025): no tool-call rendering",
    ),
    Revision(
        "kimi-k2-instruct-0711-tools",
        "kimi_k2_instruct_0711_tools.jinja",
        "Kimi-K2-Instruct's tool-calling revision: client ids verbatim, ## Return of ID",
    ),
    Revision(
        "kimi-k2-instruct-0905",
        "kimi_k2_instruct_0905.jinja",
        "Kimi-K2-Instruct-0905: # Tools heading, message name in place of the role",
    ),
)
REVISION_NAMES = tuple(r.name for r in REVISIONS)
# The template each checkpoint release carries today (Kimi-K2-Instruct's was revised in place).
RELEASE_REVISION = {"0711": "kimi-k2-instruct-0711-tools", "0905": "kimi-k2-instruct-0905"}
DEFAULT_REVISION = "kimi-k2-instruct-0905"  # for a checkpoint that has no template at all
CUSTOM = "custom"


def builtin_template(revision: str) -> str:
    """The text of our template for a revision (see `REVISION_NAMES`).

    >>> builtin_template("kimi-k2-instruct-0905").startswith("{#- kimi-k2-instruct-0905")
    True
    """
    found = next((r for r in REVISIONS if r.name == revision), None)
    if found is None:
        known = ", ".join(REVISION_NAMES)
        raise K2Error(f"unknown chat template revision {revision!r} (known: {known})")
    resource = resources.files("k2trt.chat") / "templates" / found.file
    return resource.read_text(encoding="utf-8")


def release_template(release: str) -> str:
    """The template a checkpoint release carries: `0711` or `0905`.

    >>> release_template("0711") == builtin_template("kimi-k2-instruct-0711-tools")
    True
    """
    if release not in RELEASE_REVISION:
        known = ", ".join(RELEASE_REVISION)
        raise K2Error(f"unknown release {release!r} (known: {known})")
    return builtin_template(RELEASE_REVISION[release])


# ---------------------------------------------------------------------------------------------
# Recognition by rendering

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Wetter für eine Stadt",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
_IMAGE = {"type": "image_url", "image_url": {"url": "data:,"}}
_CALLS = [
    {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
    {"id": "functions.get_weather:1", "type": "function",
     "function": {"name": "get_weather", "arguments": {"city": "Köln"}}},
]  # fmt: skip
# Every difference between the revisions shows in at least one of these.
_PROBES: tuple[tuple[list[dict[str, Any]], list[dict[str, Any]] | None, bool], ...] = (
    ([], _TOOLS, True),
    ([{"role": "user", "content": "hi"}], None, False),
    (
        [
            {"role": "system", "content": "Be brief.", "name": "rules"},
            {"role": "user", "name": "alice", "content": [{"type": "text", "text": "a "}, _IMAGE]},
            {"role": "assistant", "content": "Checking.", "tool_calls": _CALLS},
            {"role": "tool", "tool_call_id": "call_0", "content": "12°C\nsunny"},
            {"role": "tool", "tool_call_id": "functions.get_weather:1", "content": [_IMAGE]},
            {"role": "developer", "content": "x"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}], "tool_calls": []},
            {"role": "user", "content": "<|im_end|>", "name": ""},
        ],
        _TOOLS,
        True,
    ),
)


def _fingerprint(text: str) -> tuple[str | None, ...] | None:
    """The probes' prompts (None where the template fails), or None if it cannot compile."""
    from k2trt.chat.template import ChatTemplate, render_chat, sha256_text

    chat = ChatTemplate(text, CUSTOM, sha256_text(text), "inline")
    prompts: list[str | None] = []
    for messages, tools, generation_prompt in _PROBES:
        try:
            rendered = render_chat(chat, messages, tools, add_generation_prompt=generation_prompt)
        except K2Error:
            prompts.append(None)
            continue
        prompts.append(rendered.text)
    return tuple(prompts) if any(p is not None for p in prompts) else None


@lru_cache(maxsize=3)
def _revision_fingerprints() -> dict[tuple[str | None, ...], str]:
    found: dict[tuple[str | None, ...], str] = {}
    for revision in REVISION_NAMES:
        fingerprint = _fingerprint(builtin_template(revision))
        assert fingerprint is not None and fingerprint not in found, revision
        found[fingerprint] = revision
    return found


@lru_cache(maxsize=64)
def known_revision(text: str) -> str:
    """Which published revision `text` renders exactly like, or `custom`.

    >>> known_revision(builtin_template("kimi-k2-instruct-0711"))
    'kimi-k2-instruct-0711'
    >>> known_revision("{{ messages }}")
    'custom'
    """
    fingerprint = _fingerprint(text)
    if fingerprint is None:
        return CUSTOM
    return _revision_fingerprints().get(fingerprint, CUSTOM)
