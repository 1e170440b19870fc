"""Write a small but real Kimi K2 tokenizer: ``tiktoken.model`` + ``tokenizer_config.json``.

The layout follows moonshotai/Kimi-K2-Instruct: byte-level BPE ranks in tiktoken's
``base64(token) rank`` format, 256 reserved special ids directly after the BPE ranks
(named ones at fixed offsets, the rest ``<|reserved_token_{id}|>``), and a
``tokenizer_config.json`` that points ``AutoTokenizer`` at ``tokenization_kimi``.
Only the vocabulary is small: the ranks are learned from a built-in text sample.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from k2trt.chat.kimi_vocab import (
    KIMI_PAT_STR,
    NAMED_SPECIAL_TOKENS,
    NUM_RESERVED_SPECIAL_TOKENS,
    reserved_token_name,
)
from k2trt.synth.sample_text import SAMPLE_TEXT

__all__ = [
    "ADDITIONAL_SPECIAL_TOKENS",
    "DEFAULT_SYSTEM_PROMPT",
    "KIMI_PAT_STR",
    "NAMED_SPECIAL_TOKENS",
    "NUM_RESERVED_SPECIAL_TOKENS",
    "TokenizerInfo",
    "default_chat_template",
    "special_tokens",
    "train_byte_bpe",
    "write_tokenizer",
]


# Upstream's default `additional_special_tokens` list, in its order.
ADDITIONAL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|im_end|>",
    "<|im_user|>",
    "<|im_assistant|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "[EOT]",
    "<|im_system|>",
    "<|im_middle|>",
)

DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."

# What transformers writes for "no limit" (int(1e30)); the real config carries it.
_MODEL_MAX_LENGTH = 1000000000000000019884624838656

# Pre-split for training only. It need not match KIMI_PAT_STR; it just keeps merges
# from crossing word boundaries. `[^\W\d_]` is "letters", CJK included.
_TRAIN_SPLIT = re.compile(
    r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_Pair = tuple[bytes, bytes]


@dataclass(frozen=True)
class TokenizerInfo:
    """Ids of a written tokenizer that the model config must agree with."""

    num_base_tokens: int
    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    im_end_id: int
    pad_token_id: int


def special_tokens(num_base_tokens: int) -> dict[str, int]:
    """All 256 reserved specials by name, as upstream's loader names them.

    Unnamed slots get ``<|reserved_token_{absolute id}|>``. (Upstream's loader also
    makes two more, at +256 and +257, beyond the model's vocab_size; they are left
    out here because no embedding row exists for them.)
    """
    named = {offset: content for offset, content, _ in NAMED_SPECIAL_TOKENS}
    out: dict[str, int] = {}
    for offset in range(NUM_RESERVED_SPECIAL_TOKENS):
        token_id = num_base_tokens + offset
        out[named.get(offset, reserved_token_name(token_id))] = token_id
    return out


def _continue_bpe(parts: list[bytes], ranks: dict[bytes, int]) -> list[bytes]:
    # tiktoken's rule: repeatedly merge the adjacent pair whose concatenation has
    # the lowest rank (leftmost on ties) until no concatenation is a token.
    parts = list(parts)
    while len(parts) > 1:
        best_rank, best_i = -1, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_i < 0 or rank < best_rank):
                best_rank, best_i = rank, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


class _PairStats:
    """Weighted adjacent-pair counts over the sample's distinct pieces."""

    def __init__(self, pieces: list[bytes], freqs: list[int]) -> None:
        self.parts = [[bytes([b]) for b in piece] for piece in pieces]
        self.freqs = freqs
        self.counts: Counter[_Pair] = Counter()
        # Keyed by concatenation: once it becomes a token, tiktoken merges every
        # adjacent pair that spells it, not only the pair that was chosen.
        self.where: defaultdict[bytes, set[int]] = defaultdict(set)
        self.heap: list[tuple[int, bytes, bytes, bytes]] = []
        for idx in range(len(pieces)):
            self._account(idx, +1)
        for pair, count in sorted(self.counts.items()):
            self.heap.append((-count, pair[0] + pair[1], pair[0], pair[1]))
        heapq.heapify(self.heap)

    def _account(self, idx: int, sign: int) -> set[_Pair]:
        parts = self.parts[idx]
        touched = set(itertools.pairwise(parts))
        for pair in itertools.pairwise(parts):
            self.counts[pair] += sign * self.freqs[idx]
            if sign > 0:
                self.where[pair[0] + pair[1]].add(idx)
            else:
                self.where[pair[0] + pair[1]].discard(idx)
        return touched

    def pop_best(self, ranks: dict[bytes, int]) -> _Pair | None:
        """Most frequent pair (ties: smallest bytes), skipping stale heap entries."""
        while self.heap:
            neg, concat, left, right = heapq.heappop(self.heap)
            if -neg > 0 and self.counts[(left, right)] == -neg and concat not in ranks:
                return left, right
        return None

    def apply(self, token: bytes, ranks: dict[bytes, int]) -> None:
        """Re-encode every piece that can now merge into `token`; refresh counts."""
        touched: set[_Pair] = set()
        for idx in sorted(self.where.get(token, ())):
            touched |= self._account(idx, -1)
            self.parts[idx] = _continue_bpe(self.parts[idx], ranks)
            touched |= self._account(idx, +1)
        for pair in sorted(touched):
            if self.counts[pair] > 0:
                heapq.heappush(self.heap, (-self.counts[pair], pair[0] + pair[1], *pair))


@lru_cache(maxsize=8)
def train_byte_bpe(text: str, num_merges: int) -> tuple[bytes, ...]:
    """Learn `num_merges` byte-level BPE merges from `text`; return tokens in rank order.

    Ranks 0..255 are the single bytes. Pieces are kept in tiktoken's own encoding
    after every merge, so each learned token is exactly what tiktoken builds from
    its two parents and every rank is reachable.
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    piece_counts = Counter(m.encode("utf-8") for m in _TRAIN_SPLIT.findall(text))
    pieces = sorted(piece_counts)
    stats = _PairStats(pieces, [piece_counts[p] for p in pieces])
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    for _ in range(num_merges):
        pair = stats.pop_best(ranks)
        if pair is None:
            learned = len(ranks) - 256
            raise ValueError(f"sample text supports only {learned} merges, {num_merges} asked")
        token = pair[0] + pair[1]
        ranks[token] = len(ranks)
        stats.apply(token, ranks)
    return tuple(ranks)


def default_chat_template(release: str = "0711") -> str:
    """The chat template a synthetic checkpoint of `release` carries: the real format's.

    0711: Kimi-K2-Instruct's current (tool-calling) revision; 0905: Kimi-K2-Instruct-0905's.
    Our own text, rendering byte for byte like Moonshot's (see `k2trt.chat.revisions`).
    """
    from k2trt.chat.revisions import release_template

    return release_template(release)


def _tiktoken_model_bytes(tokens: tuple[bytes, ...]) -> bytes:
    return b"".join(
        base64.b64encode(token) + b" " + str(rank).encode("ascii") + b"\n"
        for rank, token in enumerate(tokens)
    )


def _tokenizer_config(num_base_tokens: int, chat_template: str) -> dict[str, Any]:
    # Insertion order is the file order; ids are not sorted as strings because
    # their digit count can change inside the range.
    decoder = {
        str(num_base_tokens + offset): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for offset, content, special in NAMED_SPECIAL_TOKENS
    }
    return {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(ADDITIONAL_SPECIAL_TOKENS),
        "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]},
        "bos_token": "[BOS]",
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "[EOS]",
        "extra_special_tokens": {},
        "model_max_length": _MODEL_MAX_LENGTH,
        "pad_token": "[PAD]",
        "tokenizer_class": "TikTokenTokenizer",
        "unk_token": "[UNK]",
    }


def write_tokenizer(
    out: Path,
    *,
    num_merges: int = 1024,
    chat_template: str | None = None,
    release: str = "0711",
) -> TokenizerInfo:
    """Write tiktoken.model and tokenizer_config.json into `out`; return the ids.

    Output is a pure function of the arguments: same inputs, byte-identical files.
    `chat_template=None` stores :func:`default_chat_template` of `release`.
    """
    tokens = train_byte_bpe(SAMPLE_TEXT, num_merges)
    num_base = len(tokens)
    template = default_chat_template(release) if chat_template is None else chat_template
    config = _tokenizer_config(num_base, template)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiktoken.model").write_bytes(_tiktoken_model_bytes(tokens))
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    (out / "tokenizer_config.json").write_bytes(text.encode("utf-8"))
    return TokenizerInfo(
        num_base_tokens=num_base,
        vocab_size=num_base + NUM_RESERVED_SPECIAL_TOKENS,
        bos_token_id=num_base + 0,
        eos_token_id=num_base + 1,
        im_end_id=num_base + 2,
        pad_token_id=num_base + 255,
    )
