"""One error type whose message is the one line a user sees, and the one place that line is
formatted: control characters escaped, length capped, hostile values shown bounded."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

# A line a person can read; a 1 MB tensor name or path must not make a 1 MB line.
MAX_LINE = 1000
MAX_PATH = 300
MAX_VALUE = 120


def clip(text: str, limit: int = MAX_LINE) -> str:
    """`text` cut to at most `limit` characters, keeping both ends (the file and the verdict).

    >>> clip("a" * 50 + "z", 20)
    'aaaaaaa…[41 cut]…aaz'
    """
    if len(text) <= limit:
        return text
    room = max(0, limit - len(f"…[{len(text)} cut]…"))
    head = room * 3 // 4
    tail = room - head
    cut = len(text) - head - tail
    return f"{text[:head]}…[{cut} cut]…{text[len(text) - tail :]}"


def one_line(text: str, limit: int = MAX_LINE) -> str:
    r"""Newlines, tabs and other control characters escaped, then clipped to `limit`.

    >>> one_line("bad\nname\x00")
    'bad\\nname\\x00'
    """
    if text.isprintable():
        return clip(text, limit)
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in clip(text, limit))
    return clip(escaped, limit)


class _Shown(reprlib.Repr):
    """repr() with bounded depth, lengths and integer digits (a 4,000-digit int stays short)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxtuple = 3, 6, 8, 8
        self.maxstring, self.maxother = MAX_VALUE, MAX_VALUE

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() <= 128:
            return repr(x)
        digits = int(x.bit_length() * 0.30103) + 1
        return f"{'-' if x < 0 else ''}<integer of ~{digits} digits>"

    def repr_str(self, x: str, level: int) -> str:
        return clip(repr(x), self.maxstring)


_SHOWN = _Shown()


def show(value: Any) -> str:
    """A value from an input file as an error message may print it: bounded, one line.

    >>> show([[[[1]]]])
    '[[[[...]]]]'
    >>> show(10**400)
    '<integer of ~401 digits>'
    """
    try:
        return one_line(_SHOWN.repr(value), MAX_VALUE * 2)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"


def format_error(message: str, path: str | Path | None = None) -> str:
    """The one error line: `path: message`, each part escaped and capped.

    >>> format_error("index lists no shards", "ckpt/model.safetensors.index.json")
    'ckpt/model.safetensors.index.json: index lists no shards'
    """
    text = one_line(message, MAX_LINE)
    return f"{one_line(str(path), MAX_PATH)}: {text}" if path is not None else text


class K2Error(Exception):
    """A user-facing failure: one line naming what and where.

    >>> str(K2Error("index lists no shards", path="ckpt/model.safetensors.index.json"))
    'ckpt/model.safetensors.index.json: index lists no shards'
    """

    exit_code = 2  # bad input or a failure to read it

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.message = one_line(message, MAX_LINE)
        self.path = None if path is None else str(path)
        super().__init__(format_error(message, self.path if self.path else None))


class CheckFailed(K2Error):
    """The input was read fine and failed a check (a gate, a hash, a finding): exit 1.

    >>> CheckFailed("gate smoke failed").exit_code
    1
    """

    exit_code = 1
