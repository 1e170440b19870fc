"""Kimi chat templates: load them, and render them exactly as transformers would.

`render_chat` reproduces transformers 5.x `apply_chat_template` text output byte for byte
(see `transformers/utils/chat_template_utils.py`: `_cached_compile_jinja_template` builds
the environment, `render_jinja_template` prepares the inputs) without importing transformers:

- environment: `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
  `loopcontrols` extension and a pass-through `{% generation %}` block; globals
  `raise_exception`, `strftime_now`, a restricted `dict` and an underscore-refusing `namespace`;
  a `tojson` filter that is plain `json.dumps` (no HTML escaping, `ensure_ascii=False`);
- inputs: every value is rebuilt from plain JSON types (`_plain_template_data`), reasoning
  fields are aliased (`_alias_reasoning_fields`), message keys whose value is None are dropped
  (`apply_chat_template`), and the template sees `messages`, `tools`, `documents`,
  `add_generation_prompt` and the extra keyword arguments.

Two deliberate differences: a template that mutates lists (`.append`, `.pop`), which
transformers refuses, is rendered in a mutable sandbox on copies and flagged `mutating`; and
touching a private Python attribute (`''.__class__`) fails at once instead of turning into an
empty string that fails later (or never).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils

from k2trt.chat.revisions import DEFAULT_REVISION, builtin_template, known_revision
from k2trt.chat.template_inputs import (
    RenderOptions,
    plain,
    prepare_messages,
    prepare_tools,
    rewrite_tool_call_ids,
)
from k2trt.errors import K2Error
from k2trt.fsutil import parse_json, read_small

__all__ = [
    "ChatTemplate",
    "RenderedPrompt",
    "builtin_template",
    "chat_template_from_text",
    "load_chat_template",
    "render_chat",
    "rewrite_tool_call_ids",
    "sha256_text",
]

_MIN_JINJA = (3, 1, 6)  # transformers' floor too: older versions have known sandbox escapes
_INLINE = "inline"


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A chat template's text and where it came from.

    `name` is the published revision the text renders exactly like (`kimi-k2-instruct-0905`,
    see `k2trt.chat.revisions`), otherwise `custom`; `source` is the file it was read from, or
    a phrase such as `built-in kimi-k2-instruct-0905 (no chat template in ckpt)`.
    """

    text: str
    name: str
    sha256: str
    source: str


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
    """A rendered prompt; `mutating` says the template needed list mutation (see module doc)."""

    text: str
    mutating: bool
    template_name: str
    template_sha256: str


# ---------------------------------------------------------------------------------------------
# Loading


def sha256_text(text: str) -> str:
    """Hex sha256 of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chat_template_from_text(text: str, source: str = _INLINE) -> ChatTemplate:
    """Wrap template text, naming it after the published revision it renders exactly like.

    >>> chat_template_from_text(builtin_template("kimi-k2-instruct-0711")).name
    'kimi-k2-instruct-0711'
    """
    return ChatTemplate(text, known_revision(text), sha256_text(text), source)


def load_chat_template(ckpt_dir_or_file: str | Path) -> ChatTemplate:
    """A checkpoint's chat template, the way transformers finds it; built-in 0905 if it has none.

    A directory is searched for `chat_template.jinja` (which transformers prefers), then
    `tokenizer_config.json`; a file may be a `.jinja` template or a JSON config.

    >>> load_chat_template("ckpt/").source  # doctest: +SKIP
    'ckpt/chat_template.jinja'
    """
    path = Path(ckpt_dir_or_file)
    if path.is_dir():
        # present at all (lexists) means read: a FIFO or device there is refused, not skipped
        jinja_file = path / "chat_template.jinja"
        if os.path.lexists(jinja_file):
            return chat_template_from_text(_read_text(jinja_file), str(jinja_file))
        config = path / "tokenizer_config.json"
        found = _template_in_config(config) if os.path.lexists(config) else None
        if found is not None:
            return chat_template_from_text(found, str(config))
        return _fallback(f"no chat template in {path}")
    if not path.exists():
        raise K2Error("no such file or directory", path=path)
    if path.suffix == ".jinja":
        return chat_template_from_text(_read_text(path), str(path))
    if path.suffix == ".json":
        found = _template_in_config(path)
        if found is None:
            return _fallback(f"no chat_template in {path}")
        return chat_template_from_text(found, str(path))
    raise K2Error("expected a .jinja template, a tokenizer_config.json or a directory", path=path)


def _fallback(why: str) -> ChatTemplate:
    chat = chat_template_from_text(builtin_template(DEFAULT_REVISION))
    return dataclasses.replace(chat, source=f"built-in {chat.name} ({why})")


MAX_TEMPLATE_FILE_BYTES = 4 << 20  # real templates and tokenizer configs are a few KB


def _read_text(path: Path) -> str:
    # a regular, size-capped file (a FIFO or /dev/zero in its place is refused, never read)
    data = read_small(path, "chat template file", limit=MAX_TEMPLATE_FILE_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise K2Error(f"chat template is not UTF-8 (byte {exc.start})", path=path) from None


def _template_in_config(path: Path) -> str | None:
    """`chat_template` of a JSON config: a string, or the "default" of a list of named ones."""
    config = parse_json(_read_text(path), path, "tokenizer config")
    value = config.get("chat_template") if isinstance(config, dict) else None
    if value is None or isinstance(value, str):
        return value
    # transformers' list form: [{"name": ..., "template": ...}, ...]
    if isinstance(value, list) and all(
        isinstance(e, dict)
        and isinstance(e.get("name"), str)
        and isinstance(e.get("template"), str)
        for e in value
    ):
        named: dict[str, str] = {e["name"]: e["template"] for e in value}
        if "default" in named:
            return named["default"]
        names = ", ".join(sorted(named)) or "none"
        raise K2Error(f'chat_template list has no "default" entry (has: {names})', path=path)
    raise K2Error("chat_template must be a string or a list of {name, template}", path=path)


# ---------------------------------------------------------------------------------------------
# The Jinja environment (mirrors transformers' _cached_compile_jinja_template)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks assistant text with it.

    We never compute assistant masks, so the block renders its body unchanged.
    """

    tags = {"generation"}  # noqa: RUF012 (Jinja declares it as a plain set attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body", [], [])
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _refuse_private(obj: Any, attribute: str) -> None:
    # The sandbox only refuses such access lazily (an Undefined that raises when used), so
    # `{{ ''.__class__ }}` renders as "" there; a template probing internals is hostile, stop it.
    if attribute.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


class _ImmutableEnv(jinja2.sandbox.ImmutableSandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.runtime.Undefined:
        _refuse_private(obj, attribute)
        return super().unsafe_undefined(obj, attribute)


class _MutableEnv(jinja2.sandbox.SandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.runtime.Undefined:
        _refuse_private(obj, attribute)
        return super().unsafe_undefined(obj, attribute)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` only: no route to the real type's attributes."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A Jinja namespace that refuses underscore-prefixed attributes, like transformers'."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        # Jinja's own signature trick, so that `namespace(self=...)` still works.
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes, got {name!r}"
            )


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' override: Jinja's own tojson HTML-escapes and takes only `indent`.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _check_jinja_version() -> None:
    parts = tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3])
    if parts < _MIN_JINJA:
        raise K2Error(
            f"chat templates need jinja2>=3.1.6 (sandbox fixes); found {jinja2.__version__}"
        )


@lru_cache(maxsize=64)
def _compile(text: str, mutable: bool) -> jinja2.Template:
    _check_jinja_version()
    env_type = _MutableEnv if mutable else _ImmutableEnv
    env = env_type(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(text)


# ---------------------------------------------------------------------------------------------
# Rendering


def render_chat(
    template: str | ChatTemplate,
    messages: Sequence[Any],
    tools: Sequence[Any] | None = None,
    *,
    add_generation_prompt: bool = True,
    rewrite_tool_ids: bool = False,
    documents: Sequence[Any] | None = None,
    drop_none: bool = True,
    flatten_content: bool = False,
    drop_names: bool = False,
    **extra: Any,
) -> RenderedPrompt:
    """Render a conversation exactly as transformers' `apply_chat_template(tokenize=False)`.

    `template` is template text or a `ChatTemplate`. Options, all on copies: `rewrite_tool_ids`
    (see `rewrite_tool_call_ids`), `drop_none` (drop keys whose value is None, as
    `apply_chat_template` does), `flatten_content` (join all-text content lists into a string),
    `drop_names` (drop `name`, which Kimi prints in place of the role). `extra` reaches the
    template as variables (transformers also passes the tokenizer's special tokens this way).

    A template that fails on a conversation is reported in one line naming the message and
    field it could not render (`messages[2].tool_calls[0]: chat template ... cannot render
    this: ...`), found by rendering shorter conversations; `tools` when only the tools fail.

    >>> t = builtin_template("kimi-k2-instruct-0905")
    >>> render_chat(t, [{"role": "user", "content": "hi"}]).text[-78:]
    '<|im_user|>user<|im_middle|>hi<|im_end|><|im_assistant|>assistant<|im_middle|>'
    """
    chat = template if isinstance(template, ChatTemplate) else chat_template_from_text(template)
    opts = RenderOptions(rewrite_tool_ids, drop_none, flatten_content, drop_names)

    def attempt(some_messages: Sequence[Any], some_tools: Sequence[Any] | None) -> RenderedPrompt:
        def context() -> dict[str, Any]:
            # Built afresh for every attempt: a mutating template must start from clean copies.
            return {
                "messages": prepare_messages(some_messages, opts),
                "tools": prepare_tools(some_tools),
                "documents": plain(None if documents is None else list(documents)),
                "add_generation_prompt": add_generation_prompt,
                **plain(extra),
            }

        try:
            text = _render(chat, context(), mutable=False)
            mutating = False
        except jinja2.exceptions.SecurityError:
            # Either list mutation (allowed below) or real unsafe access (refused below too).
            text = _render(chat, context(), mutable=True)
            mutating = True
        return RenderedPrompt(text, mutating, chat.name, chat.sha256)

    try:
        return attempt(messages, tools)
    except _RenderFailed as exc:
        where = _blame(lambda m, t: _fails(attempt, m, t), list(messages), tools)
        if where is None:
            raise
        message = f"chat template {chat.name} cannot render this: {exc.detail}"
        raise K2Error(message, path=where) from exc


class _RenderFailed(K2Error):
    """The template compiled but failed on these inputs (not a syntax or sandbox refusal)."""

    def __init__(self, message: str, *, path: str | None, detail: str) -> None:
        super().__init__(message, path=path)
        self.detail = detail


def _fails(
    attempt: Callable[[Sequence[Any], Sequence[Any] | None], RenderedPrompt],
    messages: Sequence[Any],
    tools: Sequence[Any] | None,
) -> bool:
    try:
        attempt(messages, tools)
    except K2Error:
        return True
    return False


_Fails = Callable[[list[Any], Sequence[Any] | None], bool]


def _blame(fails: _Fails, messages: list[Any], tools: Sequence[Any] | None) -> str | None:
    """Where a failed rendering goes wrong: `tools`, `messages[i]...`, or None if unclear."""
    if tools and not (fails(messages, []) and fails(messages, None)):
        return "tools"
    if fails([], tools):
        return None
    ok, bad = 0, len(messages)  # the shortest failing prefix lies in (ok, bad]
    while bad - ok > 1:
        mid = (ok + bad) // 2
        ok, bad = (ok, mid) if fails(messages[:mid], tools) else (mid, bad)
    i = bad - 1
    head = messages[:i]
    return _narrow(messages[i], f"messages[{i}]", lambda m: fails([*head, m], tools))


def _narrow(value: Any, path: str, fails_as: Callable[[Any], bool], depth: int = 3) -> str:
    """Descend into the part of `value` without which it renders (role last: it steers)."""
    if depth == 0 or not isinstance(value, (dict, list)) or not value:
        return path
    if isinstance(value, dict):
        keys: list[Any] = sorted(value, key=lambda k: k == "role")
    else:
        keys = list(range(len(value)))
    for key in keys:
        if fails_as(_without(value, key)):
            continue
        child = f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]"

        def fails_inside(new: Any, key: Any = key) -> bool:
            return fails_as(_replaced(value, key, new))

        return _narrow(value[key], child, fails_inside, depth - 1)
    return path


def _without(value: dict[Any, Any] | list[Any], key: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != key}
    return value[:key] + value[key + 1 :]


def _replaced(value: dict[Any, Any] | list[Any], key: Any, new: Any) -> Any:
    if isinstance(value, dict):
        return {**value, key: new}
    return [new if j == key else v for j, v in enumerate(value)]


def _render(chat: ChatTemplate, context: dict[str, Any], *, mutable: bool) -> str:
    """Compile and render; every template failure becomes a K2Error naming the template."""
    try:
        return _compile(chat.text, mutable).render(**context)
    except jinja2.exceptions.SecurityError as exc:
        if not mutable:
            raise
        raise _template_error(chat, f"refused unsafe operation: {exc}") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise _template_error(chat, f"line {exc.lineno}: {exc.message}") from exc
    except (jinja2.TemplateError, TypeError, ValueError, LookupError) as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        error = _template_error(chat, detail)
        raise _RenderFailed(error.message, path=error.path, detail=detail) from exc


def _template_error(chat: ChatTemplate, detail: str) -> K2Error:
    one_line = " ".join(detail.split())
    from_file = chat.source != _INLINE and not chat.source.startswith("built-in")
    path = chat.source if from_file else None
    return K2Error(f"chat template {chat.name}: {one_line}", path=path)
