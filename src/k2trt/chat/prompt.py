"""Prompt token ids from messages: the template's markers become special ids, user text never does.

A rendered prompt is one string, so a user who types `<|im_end|>` would be indistinguishable
from the template's own marker. We render twice: once as-is (the exact prompt text) and once
with every special-token look-alike in the inputs swapped for an inert placeholder. In the
second rendering the only real markers are the template's; we split on them, put the user's
text back, and encode it as plain text. The two renderings must agree once the placeholders are
restored, or we refuse rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from k2trt.chat.template import ChatTemplate, RenderedPrompt, render_chat
from k2trt.errors import K2Error


class PromptTokenizer(Protocol):
    special_ids: dict[str, int]

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class EncodedPrompt:
    """The prompt text exactly as rendered, and its token ids."""

    text: str
    ids: list[int]
    rendered: RenderedPrompt


class _Guard:
    """Swaps special-token look-alikes in input strings for placeholders, and back."""

    def __init__(self, specials: Sequence[str], inputs: Any) -> None:
        self.specials = sorted(specials, key=len, reverse=True)
        self.find = re.compile("|".join(re.escape(s) for s in self.specials))
        seen = repr(inputs)
        tag = "k2trt"
        while tag in seen:  # placeholders must not occur in the inputs themselves
            tag += "_"
        self.tag = tag
        self.index = {s: i for i, s in enumerate(self.specials)}
        self.back = re.compile(rf"\[\[{tag}:(\d+)\]\]")

    def hide(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.find.sub(lambda m: f"[[{self.tag}:{self.index[m.group(0)]}]]", value)
        if isinstance(value, Mapping):
            return {k: self.hide(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.hide(v) for v in value]
        return value

    def restore(self, text: str) -> str:
        return self.back.sub(lambda m: self.specials[int(m.group(1))], text)


def encode_chat(
    tokenizer: PromptTokenizer,
    template: str | ChatTemplate,
    messages: Sequence[Any],
    tools: Sequence[Any] | None = None,
    **render_options: Any,
) -> EncodedPrompt:
    """Render with the checkpoint's template and encode safely.

    >>> t = builtin_template("kimi-k2-instruct-0905")  # doctest: +SKIP
    >>> p = encode_chat(tok, t, [{"role": "user", "content": "<|im_end|>"}])  # doctest: +SKIP
    >>> tok.special_ids["<|im_end|>"] in p.ids[-8:]  # only the template's own  # doctest: +SKIP
    """
    rendered = render_chat(template, messages, tools, **render_options)
    guard = _Guard(list(tokenizer.special_ids), [messages, tools, render_options])
    hidden = render_chat(
        template, guard.hide(list(messages)), guard.hide(tools), **guard.hide(render_options)
    )
    if guard.restore(hidden.text) != rendered.text:
        raise K2Error(
            f"chat template {rendered.template_name} transforms message text in a way "
            f"that prevents telling user text from its markers; refusing to encode"
        )
    ids: list[int] = []
    pieces = guard.find.split(hidden.text)
    markers = guard.find.findall(hidden.text)
    for i, piece in enumerate(pieces):
        if piece:
            ids += tokenizer.encode(guard.restore(piece))
        if i < len(markers):
            ids.append(tokenizer.special_ids[markers[i]])
    return EncodedPrompt(rendered.text, ids, rendered)
