"""Request bodies: read with a size limit and a time limit, decoded with a nesting limit.

Every way a body can be wrong is a 4xx naming what is wrong: too large (413), too slow
(408), not JSON, nested deeper than `MAX_DEPTH` or holding a lone UTF-16 surrogate (400,
naming the field where it happens). Nothing a client sends reaches Python's recursion limit
(the JSON decoder's, or the chat template's when it renders a tool schema).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.types import Receive, Scope

from k2trt.fsutil import may_nest_deeper
from k2trt.serve.checks import at
from k2trt.serve.errors import ApiError, invalid

# Arrays and objects inside one another, the body itself being level 1. A tool schema of 40
# nested levels is ~85 here; the chat template recurses ~2 frames per schema level, so 128
# stays far below Python's recursion limit of 1000.
MAX_DEPTH = 128
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


class ClientGone(Exception):
    """The client disconnected while its body was being read."""


async def read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float) -> bytes:
    """The request body; 413 past `limit` bytes (Content-Length checked before reading), 408
    when it has not all arrived `timeout_s` seconds after the headers."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    try:
        return await asyncio.wait_for(_read(receive, limit), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408, f"body: not received within {timeout_s:g} s (--body-timeout)", param="body"
        ) from None


async def _read(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"body: larger than {limit} bytes (--max-body-bytes)", code="request_too_large"
    )


def parse_json(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The decoded body, or a 400 naming what is wrong and where.

    >>> parse_json(b'{"a": [1]}')
    {'a': [1]}
    >>> parse_json(b'{"a": [[1]]}', max_depth=2)
    Traceback (most recent call last):
    k2trt.serve.errors.ApiError: a[0]: nested deeper than 2 levels of arrays and objects
    """
    try:
        value = json.loads(body)
    except RecursionError:
        msg = f"nested deeper than {max_depth} levels of arrays and objects"
        raise invalid("body", msg) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise ApiError(400, f"body: not valid JSON ({exc})", param="body") from None
    # Cheap tests first: a body with few brackets cannot be deep, and only a \uD8xx-\uDFxx
    # escape can decode to a lone surrogate.
    deep = may_nest_deeper(body, max_depth)
    surrogates = _SURROGATE_ESCAPE.search(body) is not None
    if deep or surrogates:
        _check_tree(value, max_depth)
    return value


def _check_tree(root: Any, max_depth: int) -> None:
    """Walk the decoded body without recursion: depth and valid Unicode, naming the path."""
    stack: list[tuple[str, Any, int]] = [("", root, 1)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, path or "body")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > max_depth:
            where = path if len(path) <= 80 else path[:77] + "..."
            msg = f"nested deeper than {max_depth} levels of arrays and objects"
            raise ApiError(400, f"{where or 'body'}: {msg}", param=where or "body")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_text(key, path or "body")
            stack.append((at(path, key), item, depth + 1))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = f"not valid Unicode (a lone surrogate at character {exc.start})"
        raise invalid(where, msg) from None
