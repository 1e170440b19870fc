"""Kimi K2's tiktoken tokenizer, loaded from its files without running remote code.

A checkpoint ships ``tiktoken.model`` (``base64(token_bytes) rank`` per line) and
``tokenizer_config.json`` (``added_tokens_decoder`` names 17 of the 256 special ids that
follow the BPE ranks). This module reproduces what the shipped ``tokenization_kimi.py``
does with them, with one deliberate difference: :meth:`KimiTokenizer.encode` never turns
text into special ids (upstream's default ``encode`` does), so user text cannot forge
``<|im_end|>`` or a tool call. Template-rendered text goes through
:meth:`KimiTokenizer.encode_with_specials`, which matches upstream's default exactly.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

from k2trt.chat.kimi_vocab import (
    KIMI_PAT_STR,
    NUM_RESERVED_SPECIAL_TOKENS,
    TOOL_MARKERS,
    reserved_token_name,
)
from k2trt.errors import K2Error
from k2trt.fsutil import parse_json, read_small

__all__ = [
    "MAX_NO_WHITESPACES_CHARS",
    "NUM_RESERVED_SPECIAL_TOKENS",
    "TIKTOKEN_MAX_ENCODE_CHARS",
    "TOOL_MARKERS",
    "IncrementalDecoder",
    "KimiTokenizer",
    "SpecialToken",
    "presplit",
    "read_tiktoken_ranks",
]

# Upstream's pre-split limits (tokenization_kimi.py `encode`). Both count characters and
# both change tokens at the seams, so they are part of the tokenizer, not an optimisation.
TIKTOKEN_MAX_ENCODE_CHARS = 400_000
MAX_NO_WHITESPACES_CHARS = 25_000


# Bounds on what we read: the real tiktoken.model is ~2.5 MB with 163,584 short lines.
_MAX_MODEL_FILE_BYTES = 64 << 20
_MAX_CONFIG_FILE_BYTES = 16 << 20
_MAX_LINE_BYTES = 4096

# A run start is a whitespace (or non-whitespace) char whose predecessor is not one; the
# lookbehinds keep the scan linear. Python's `\s` is exactly `str.isspace`, which is what
# upstream's splitter tests (checked over every code point in the tests).
_LONG_RUN = re.compile(
    rf"(?<!\s)\s{{{MAX_NO_WHITESPACES_CHARS + 1},}}|(?<!\S)\S{{{MAX_NO_WHITESPACES_CHARS + 1},}}"
)


def presplit(text: str) -> Iterator[str]:
    """Cut `text` the way upstream does before BPE: 400k-char chunks, then no run of
    whitespace or non-whitespace longer than 25k chars inside a piece.

    >>> [len(p) for p in presplit("a" * 50_001)]
    [25000, 25000, 1]
    """
    if len(text) <= MAX_NO_WHITESPACES_CHARS:  # fast path: no run can be too long
        if text:
            yield text
        return
    for base in range(0, len(text), TIKTOKEN_MAX_ENCODE_CHARS):
        yield from _split_long_runs(text[base : base + TIKTOKEN_MAX_ENCODE_CHARS])


_SPACE = re.compile(r"\s")
_NON_SPACE = re.compile(r"\S")
_PROBE = MAX_NO_WHITESPACES_CHARS // 2


def _may_have_long_run(chunk: str) -> bool:
    # A run of >= 2K+1 chars (K = 12,500) covers a whole window [jK, jK+K] for some j, so
    # if every such window holds both classes there is no long run. In ordinary text
    # each probe stops after a few chars, which keeps this far cheaper than the
    # full scan (measured: ~1 ms vs ~260 ms per 10 MB).
    for start in range(0, len(chunk) - _PROBE, _PROBE):
        other = _NON_SPACE if chunk[start].isspace() else _SPACE
        if other.search(chunk, start, start + _PROBE + 1) is None:
            return True
    return False


def _split_long_runs(chunk: str) -> Iterator[str]:
    if not _may_have_long_run(chunk):
        yield chunk
        return
    # Upstream counts each maximal run from its first char and cuts before char
    # 25_001, 50_001, ... of the run; a piece may also hold earlier, shorter runs.
    start = 0
    for match in _LONG_RUN.finditer(chunk):
        for cut in range(
            match.start() + MAX_NO_WHITESPACES_CHARS, match.end(), MAX_NO_WHITESPACES_CHARS
        ):
            yield chunk[start:cut]
            start = cut
    yield chunk[start:]


def read_tiktoken_ranks(path: Path) -> list[bytes]:
    """Read a ``tiktoken.model`` strictly; return the token bytes in rank order.

    >>> read_tiktoken_ranks(Path("ckpt/tiktoken.model"))[:2]  # doctest: +SKIP
    [b'\\x00', b'\\x01']
    """
    data = _read_bounded(path, _MAX_MODEL_FILE_BYTES)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the trailing newline
    tokens: list[bytes | None] = [None] * len(lines)
    first_line: dict[bytes, int] = {}
    for lineno, line in enumerate(lines, start=1):
        token, rank = _parse_rank_line(line, lineno, len(lines), path)
        if tokens[rank] is not None:
            raise K2Error(f"line {lineno}: rank {rank} appears twice", path=path)
        if token in first_line:
            raise K2Error(f"line {lineno}: token repeats line {first_line[token]}", path=path)
        tokens[rank] = token
        first_line[token] = lineno
    # n distinct ranks, each < n: they are exactly 0..n-1.
    ranks = [t for t in tokens if t is not None]
    missing = [b for b in range(256) if bytes([b]) not in first_line]
    if missing:
        raise K2Error(f"no token for single byte 0x{missing[0]:02x} (BPE needs all 256)", path=path)
    return ranks


def _parse_rank_line(line: bytes, lineno: int, count: int, path: Path) -> tuple[bytes, int]:
    line = line.removesuffix(b"\r")
    if len(line) > _MAX_LINE_BYTES:
        raise K2Error(f"line {lineno}: longer than {_MAX_LINE_BYTES} bytes", path=path)
    fields = line.split(b" ")
    if len(fields) != 2:
        raise K2Error(f"line {lineno}: expected 'base64 rank', got {line[:60]!r}", path=path)
    b64, rank_text = fields
    try:
        token = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise K2Error(f"line {lineno}: bad base64 {b64[:60]!r}", path=path) from None
    if not token:
        raise K2Error(f"line {lineno}: empty token", path=path)
    if not rank_text.isdigit():  # bytes.isdigit is ASCII-only: no signs, no spaces
        raise K2Error(f"line {lineno}: rank {rank_text[:30]!r} is not a number", path=path)
    rank = int(rank_text)
    if rank >= count:
        raise K2Error(
            f"line {lineno}: rank {rank} outside 0..{count - 1} (ranks must be 0..n-1)",
            path=path,
        )
    return token, rank


def _read_bounded(path: Path, limit: int) -> bytes:
    # a regular file (a FIFO or /dev/zero in its place is refused, never read), size-capped
    if not os.path.lexists(path):
        raise K2Error("missing (a Kimi tokenizer needs this file)", path=path)
    return read_small(path, "tokenizer file", limit=limit)


@dataclass(frozen=True)
class SpecialToken:
    """One of the 256 reserved ids after the BPE ranks; `special` as in the config."""

    id: int
    content: str
    special: bool


def _read_config(path: Path) -> dict[str, Any]:
    data = _read_bounded(path, _MAX_CONFIG_FILE_BYTES)
    config = parse_json(data, path, "tokenizer config")  # depth-limited, one-line errors
    if not isinstance(config, dict):
        raise K2Error("top level must be a JSON object", path=path)
    return config


def _special_table(num_base: int, config: Mapping[str, Any], path: Path) -> list[SpecialToken]:
    # Named slots come from added_tokens_decoder; the rest are reserved names with the
    # absolute id, as upstream's loader makes them. Reserved ones count as special.
    decoder = config.get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise K2Error("added_tokens_decoder: must be an object", path=path)
    named: dict[int, tuple[str, bool]] = {}
    for key, entry in decoder.items():
        field = f"added_tokens_decoder[{key!r}]"
        if not (isinstance(key, str) and key.isdigit()):
            raise K2Error(f"{field}: key is not a token id", path=path)
        token_id = int(key)
        if not num_base <= token_id < num_base + NUM_RESERVED_SPECIAL_TOKENS:
            last = num_base + NUM_RESERVED_SPECIAL_TOKENS - 1
            raise K2Error(f"{field}: id outside the special range {num_base}..{last}", path=path)
        content = entry.get("content") if isinstance(entry, dict) else None
        special = entry.get("special", True) if isinstance(entry, dict) else None
        if not isinstance(content, str) or not content or not isinstance(special, bool):
            raise K2Error(f"{field}: needs a non-empty 'content' and a bool 'special'", path=path)
        named[token_id] = (content, special)
    table: list[SpecialToken] = []
    seen: set[str] = set()
    for token_id in range(num_base, num_base + NUM_RESERVED_SPECIAL_TOKENS):
        content, special = named.get(token_id, (reserved_token_name(token_id), True))
        if content in seen:
            raise K2Error(f"added_tokens_decoder: {content!r} names two ids", path=path)
        seen.add(content)
        table.append(SpecialToken(token_id, content, special))
    return table


def _token_name(config: Mapping[str, Any], field: str, default: str, path: Path) -> str:
    # HF configs store these either as a string or as a serialized AddedToken.
    value = config.get(field, default)
    if isinstance(value, dict):
        value = value.get("content")
    if value is None:
        return default
    if not isinstance(value, str):
        raise K2Error(f"{field}: must be a string", path=path)
    return value


class KimiTokenizer:
    """Kimi K2's BPE tokenizer: upstream-identical ids, no remote code.

    >>> tok = KimiTokenizer.from_dir(Path("ckpt"))  # doctest: +SKIP
    >>> tok.decode(tok.encode("hello <|im_end|>"))  # doctest: +SKIP
    'hello <|im_end|>'
    """

    def __init__(
        self,
        ranks: Sequence[bytes],
        specials: Sequence[SpecialToken],
        config: Mapping[str, Any] | None = None,
        *,
        config_path: Path | None = None,
    ) -> None:
        self.config: dict[str, Any] = dict(config or {})
        self.num_base_tokens = len(ranks)
        self.vocab_size = self.num_base_tokens + len(specials)
        self.specials = tuple(specials)
        self.special_ids: dict[str, int] = {s.content: s.id for s in specials}
        self.encoding = tiktoken.Encoding(
            name="kimi-k2",
            pat_str=KIMI_PAT_STR,
            mergeable_ranks={token: rank for rank, token in enumerate(ranks)},
            special_tokens=self.special_ids,
        )
        self._token_bytes: list[bytes] = [*ranks, *(s.content.encode() for s in specials)]
        # skip_special_tokens drops ids flagged special; the tool markers are not.
        self._skip_ids = frozenset(s.id for s in specials if s.special)
        where = config_path or Path("tokenizer_config.json")
        names = {
            field: _token_name(self.config, field, default, where)
            for field, default in (
                ("bos_token", "[BOS]"),
                ("eos_token", "[EOS]"),
                ("pad_token", "[PAD]"),
                ("unk_token", "[UNK]"),
            )
        }
        ids = {field: self._named_id(name, field, where) for field, name in names.items()}
        self.bos_token, self.eos_token = names["bos_token"], names["eos_token"]
        self.pad_token, self.unk_token = names["pad_token"], names["unk_token"]
        self.bos_id, self.eos_id = ids["bos_token"], ids["eos_token"]
        self.pad_id, self.unk_id = ids["pad_token"], ids["unk_token"]
        self.im_end_id = self._named_id("<|im_end|>", "added_tokens_decoder", where)
        self.tool_marker_ids: dict[str, int] = {
            name: self._named_id(name, "added_tokens_decoder", where) for name in TOOL_MARKERS
        }
        self._id_to_token: list[str] | None = None

    def _named_id(self, name: str, field: str, path: Path) -> int:
        if name not in self.special_ids:
            raise K2Error(f"{field}: {name!r} is not one of the special tokens", path=path)
        return self.special_ids[name]

    @classmethod
    def from_files(cls, model_file: Path, config_file: Path) -> KimiTokenizer:
        """Load from an explicit ``tiktoken.model`` and ``tokenizer_config.json``.

        >>> KimiTokenizer.from_files(Path("a/tiktoken.model"), Path("a/cfg.json"))  # doctest: +SKIP
        """
        ranks = read_tiktoken_ranks(Path(model_file))
        config = _read_config(Path(config_file))
        specials = _special_table(len(ranks), config, Path(config_file))
        return cls(ranks, specials, config, config_path=Path(config_file))

    @classmethod
    def from_dir(cls, path: str | Path) -> KimiTokenizer:
        """Load from a checkpoint directory holding the two tokenizer files.

        >>> tok = KimiTokenizer.from_dir("ckpt")  # doctest: +SKIP
        >>> tok.vocab_size  # doctest: +SKIP
        163840
        """
        root = Path(path)
        return cls.from_files(root / "tiktoken.model", root / "tokenizer_config.json")

    @property
    def chat_template(self) -> str | None:
        template = self.config.get("chat_template")
        return template if isinstance(template, str) else None

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> rank for the BPE part (ids below ``num_base_tokens``)."""
        return {self._token_bytes[i]: i for i in range(self.num_base_tokens)}

    @property
    def id_to_token(self) -> list[str]:
        """Token strings by id, as HF shows them: GPT-2 byte-to-unicode for BPE ids,
        the content for specials (built on first use; the real vocab has 163,840).

        >>> tok.id_to_token[tok.im_end_id]  # doctest: +SKIP
        '<|im_end|>'
        """
        if self._id_to_token is None:
            table = byte_to_unicode()
            base = [
                "".join(table[b] for b in self._token_bytes[i]) for i in range(self.num_base_tokens)
            ]
            self._id_to_token = base + [s.content for s in self.specials]
        return self._id_to_token

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id decodes to (a special's content for special ids)."""
        self._check_ids([token_id])
        return self._token_bytes[token_id]

    def encode(self, text: str) -> list[int]:
        """Encode user text. Never yields special ids: ``<|im_end|>`` in text is plain BPE.

        >>> tok.im_end_id in tok.encode("<|im_end|>")  # doctest: +SKIP
        False
        """
        encode = self.encoding.encode_ordinary
        if len(text) <= MAX_NO_WHITESPACES_CHARS:  # skip the generator for short texts
            return encode(text)
        out: list[int] = []
        for piece in presplit(text):
            out.extend(encode(piece))
        return out

    def encode_with_specials(self, text: str) -> list[int]:
        """Encode template-rendered text: every special token string becomes its id.

        Same as upstream's default ``encode`` (pre-split first, then tiktoken with all
        specials allowed), so a marker cut by a 25k/400k seam stays plain text there too.

        >>> tok.encode_with_specials("<|im_end|>") == [tok.im_end_id]  # doctest: +SKIP
        True
        """
        out: list[int] = []
        for piece in presplit(text):
            out.extend(self.encoding.encode(piece, allowed_special="all"))
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids to text; invalid UTF-8 becomes U+FFFD. Skipping keeps the tool markers.

        >>> tok.decode([tok.im_end_id], skip_special_tokens=True)  # doctest: +SKIP
        ''
        """
        return self._bytes_of(ids, skip_special_tokens).decode("utf-8", "replace")

    def incremental_decoder(self, skip_special_tokens: bool = False) -> IncrementalDecoder:
        """A per-request streaming decoder; see :class:`IncrementalDecoder`."""
        return IncrementalDecoder(self, skip_special_tokens)

    def is_special(self, token_id: int) -> bool:
        """True for ids that ``skip_special_tokens`` drops (not the tool markers)."""
        return token_id in self._skip_ids

    def _bytes_of(self, ids: Iterable[int], skip_special_tokens: bool) -> bytes:
        id_list = ids if isinstance(ids, list) else list(ids)
        self._check_ids(id_list)
        table = self._token_bytes
        if skip_special_tokens:
            skip = self._skip_ids
            return b"".join([table[i] for i in id_list if i not in skip])
        return b"".join([table[i] for i in id_list])

    def _check_ids(self, ids: Sequence[int]) -> None:
        # A negative id would silently index from the end of the table.
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise K2Error(f"token id {bad} outside 0..{self.vocab_size - 1}")


class IncrementalDecoder:
    """Streaming detokenizer for one request: ``feed`` returns only new, complete text.

    Bytes of a character split across tokens wait (at most 3) until the character is
    complete; the concatenated deltas plus ``flush()`` equal ``decode(all_ids)``. Each
    call costs O(new tokens): nothing already emitted is decoded again.

    >>> dec = tok.incremental_decoder()  # doctest: +SKIP
    >>> dec.feed(ids[:3]) + dec.feed(ids[3:]) + dec.flush() == tok.decode(ids)  # doctest: +SKIP
    True
    """

    def __init__(self, tokenizer: KimiTokenizer, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        # The stdlib incremental UTF-8 decoder holds back only a valid incomplete tail,
        # so its "replace" output matches a one-shot decode of the same bytes.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Iterable[int]) -> str:
        """Decode newly generated ids; returns the text that is now complete."""
        return self._utf8.decode(self._tok._bytes_of(ids, self._skip), final=False)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished character held back for the next ``feed`` (0..3)."""
        return len(self._utf8.getstate()[0])

    def flush(self) -> str:
        """End of stream: a dangling partial character comes out as U+FFFD."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable char table that byte-level BPE vocabularies use.

    Printable Latin-1 bytes map to themselves; the other 68 to U+0100 onwards, in order.

    >>> byte_to_unicode()[ord(" ")]
    'Ġ'
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in table)
    for n, b in enumerate(extra):
        table[b] = chr(256 + n)
    return table
