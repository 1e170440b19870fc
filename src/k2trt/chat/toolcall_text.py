"""Kimi K2 tool-call markers as text: the marker table, call ids, and joins across removals.

The parser (`chat/toolcalls.py`) scans for these markers; this module holds what it needs to
know about the text between them:

- `MARKERS` and their proper prefixes (what a delta may end with and still become a marker);
- `parse_call_id`: the `functions.NAME:IDX` form of a call id;
- `SeamGuard`: text for one destination (content, or one call's arguments) whose pieces may be
  separated by removed markers. Only where something was removed (a seam) can the text on
  both sides join into a marker string; the guard holds back what might complete one and
  drops the completing part if it does, so no parsed field ever contains a marker.
"""

from __future__ import annotations

MARKERS: tuple[str, ...] = (
    "<|tool_calls_section_begin|>",
    "<|tool_call_section_begin|>",  # singular variant seen in the wild (vLLM accepts it too)
    "<|tool_calls_section_end|>",
    "<|tool_call_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)
MAX_MARKER = max(len(m) for m in MARKERS)
# Every marker starts with "<", ends in "|>" and has no "<" or "|>" inside, so no marker is a
# prefix of another, a candidate can be cut at its first "|>", and a proper prefix of a marker
# holds "<" only at its start.
PREFIXES = frozenset(m[:k] for m in MARKERS for k in range(1, len(m)))
FUNCTIONS_PREFIX = "functions."


def parse_call_id(call_id: str) -> tuple[str, bool] | None:
    """`(name, has "functions.")` for a `[functions.]NAME:IDX` id; None for any other shape.

    NAME is everything before the last `:`; it must be non-empty and hold no whitespace and
    none of `<`, `|`, `>`. IDX is ASCII digits.

    >>> parse_call_id("functions.x.y-z_w:12"), parse_call_id("get_weather:0")
    (('x.y-z_w', True), ('get_weather', False))
    >>> parse_call_id("functions.get_weather.0") is None
    True
    """
    head, sep, idx = call_id.rpartition(":")
    if not sep or not (idx.isascii() and idx.isdigit()):
        return None
    prefixed = head.startswith(FUNCTIONS_PREFIX)
    name = head[len(FUNCTIONS_PREFIX) :] if prefixed else head
    if not name or any(c.isspace() or c in "<|>" for c in name):
        return None
    return name, prefixed


def preview(text: str, limit: int = 60) -> str:
    """`text` quoted for an error message, cut at `limit` characters.

    >>> preview("x" * 70, 4)
    "'xxxx'..."
    """
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _marker_tail(tail: str, text: str) -> str:
    """The longest suffix of (emitted text ending in `tail`) + `text` that is a proper marker
    prefix, given `tail` is that suffix before `text` came."""
    at = text.rfind("<")
    cand = text[at:] if at >= 0 else (tail + text if tail else "")
    return cand if len(cand) < MAX_MARKER and cand in PREFIXES else ""


class SeamGuard:
    """Makes one destination's text safe to emit where removed markers left seams.

    `push` pieces in output order and `seam()` wherever something between them was removed;
    `flush()` at the end. Cost is O(len(piece)): the state is a marker-prefix tail of what
    was emitted and, after a seam, text shorter than the longest marker.

    >>> g = SeamGuard()
    >>> g.push("a <|tool_call"), g.seam(), g.push("_en"), g.push("d|> b")
    (('a <|tool_call', []), None, ('', []), (' b', ['<|tool_call_end|>']))
    """

    __slots__ = ("_held", "_open", "_tail")

    def __init__(self) -> None:
        self._tail = ""  # longest suffix of the emitted text that is a proper marker prefix
        self._open = False  # a seam follows `_tail`, so text after it may complete a marker
        self._held = ""  # text after the seam that, after `_tail`, may still complete one

    def seam(self) -> None:
        """Something was removed here: text on either side must not join into a marker."""
        self._open = self._open or bool(self._tail)

    def push(self, text: str) -> tuple[str, list[str]]:
        """(what may be emitted now, markers that the join would have formed: dropped)."""
        if not self._open:
            self._tail = _marker_tail(self._tail, text)
            return text, []
        rest, self._held = self._held + text, ""
        tail = self._tail
        needs = [m[len(tail) :] for m in MARKERS if m.startswith(tail)]
        formed: list[str] = []
        at = 0
        while (need := next((n for n in needs if rest.startswith(n, at)), None)) is not None:
            formed.append(tail + need)
            at += len(need)
        rest = rest[at:] if at else rest
        if len(rest) < MAX_MARKER and any(n.startswith(rest) for n in needs):
            self._held = rest  # may still complete a marker: wait for more
            return "", formed
        self._open = False
        self._tail = _marker_tail(tail, rest)
        return rest, formed

    def flush(self) -> str:
        """The end of this destination's text: what was held back, now safe (it forms no
        marker, having been a proper prefix of one)."""
        held, self._held, self._open = self._held, "", False
        self._tail = _marker_tail(self._tail, held)
        return held
