"""Compiled tool-call grammars and per-request token masks, with xgrammar on CPU.

`ToolGrammar` belongs to one tokenizer and one server mode: it turns a request into a
`GrammarSpec` (`k2trt.chat.grammar.spec_for`), compiles it once per distinct tool set (LRU
cache of `CACHE_ENTRIES` keyed by the spec's sha256, hits and misses counted) and hands out a
`MaskFactory` that every engine path calls once per request for a fresh `ToolMask`: per step,
`apply(logits)` sets every token the grammar forbids to -inf and `accept(token)` advances.

The token table xgrammar gets (`TokenizerInfo`): BPE ids are their raw bytes (tiktoken ranks);
the five tool markers are their text behind a 0xFF byte, which is never valid UTF-8, so no
free text or JSON string can contain them and only the tag's TokenFormat positions reach them;
every other special id is empty (xgrammar's "special": never allowed) except the stop ids,
which end a finished grammar.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from k2trt.chat.grammar import (
    MARKERS,
    GrammarFailed,
    GrammarSpec,
    SchemaRejected,
    check_mode,
    functions_of,
    spec_for,
)
from k2trt.chat.tokenizer import KimiTokenizer
from k2trt.errors import K2Error

if TYPE_CHECKING:
    import torch

CACHE_ENTRIES = 64
_MARKER_PREFIX = b"\xff"  # never valid UTF-8: markers stay out of text and JSON strings
_XGR_LOCATION = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")  # "[22:52:23] /project/cpp/x.cc:5082: "


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:  # pragma: no cover - a dependency; only a broken install
        raise K2Error(
            f"constrained tool calls need xgrammar ({exc}); pip install xgrammar"
        ) from None
    return xgrammar


def encoded_vocab(tok: KimiTokenizer) -> list[bytes]:
    """Bytes per token id as xgrammar should see them (see the module docstring).

    >>> encoded_vocab(tok)[tok.tool_marker_ids["<|tool_call_end|>"]]  # doctest: +SKIP
    b'\\xff<|tool_call_end|>'
    """
    markers = {tok.tool_marker_ids[m] for m in MARKERS}
    out = []
    for i in range(tok.vocab_size):
        if i < tok.num_base_tokens:
            out.append(tok.token_bytes(i))
        elif i in markers:
            out.append(_MARKER_PREFIX + tok.token_bytes(i))
        else:
            out.append(b"")
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _XGR_LOCATION.sub("", text)


@dataclass
class CacheStats:
    """Compile cache counters and time spent compiling (misses only)."""

    hits: int = 0
    misses: int = 0
    compile_s: float = 0.0
    last_compile_s: float = 0.0


@dataclass
class ToolMask:
    """One request's grammar state; not thread-safe (one generation loop owns it)."""

    matcher: Any
    bitmask: Any
    vocab_size: int
    xgr: Any = field(repr=False)
    steps: int = 0
    mask_s: float = 0.0  # spent masking and advancing (the bench's cost figure)

    def apply(self, logits: torch.Tensor) -> None:
        """Forbidden ids of the last-position logits [vocab] -> -inf, in place."""
        start = time.perf_counter()
        if self.matcher.is_terminated():
            raise GrammarFailed("tool grammar: generation went on after the grammar ended")
        self.matcher.fill_next_token_bitmask(self.bitmask)
        width = logits.shape[-1]
        if width > self.vocab_size:  # padded model vocab: the padding is never a token
            logits[self.vocab_size :] = float("-inf")
        self.xgr.apply_token_bitmask_inplace(
            logits[: self.vocab_size], self.bitmask[0].to(logits.device)
        )
        self.steps += 1
        self.mask_s += time.perf_counter() - start
        if bool((logits == float("-inf")).all()):
            raise GrammarFailed("tool grammar: no token is allowed at this point")

    def accept(self, token: int) -> None:
        """Advance by the sampled id; GrammarFailed when the grammar refuses it."""
        start = time.perf_counter()
        ok = self.matcher.accept_token(int(token))
        self.mask_s += time.perf_counter() - start
        if not ok:
            raise GrammarFailed(f"tool grammar: token {token} is not allowed here")

    @property
    def finished(self) -> bool:
        return bool(self.matcher.is_terminated())


@dataclass(frozen=True)
class MaskFactory:
    """What SamplingParams carries: a compiled grammar; `start()` once per generation.
    `spec` travels on to other processes (the Triton `tensorrt_llm` model) as its tag."""

    compiled: Any
    vocab_size: int
    spec: GrammarSpec

    def start(self) -> ToolMask:
        xgr = _xgrammar()
        try:
            matcher = xgr.GrammarMatcher(self.compiled)
        except Exception as exc:
            raise GrammarFailed(
                f"tool grammar: cannot start a matcher ({_one_line(exc)})"
            ) from None
        bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        return ToolMask(matcher, bitmask, self.vocab_size, xgr)


class ToolGrammar:
    """Grammar compilation for one tokenizer and server mode (thread-safe).

    >>> g = ToolGrammar(tok, stop_ids=(163586,), mode="auto")  # doctest: +SKIP
    >>> factory = g.factory(tools, "required")  # None when not constrained  # doctest: +SKIP
    """

    def __init__(self, tok: KimiTokenizer, stop_ids: Sequence[int], mode: str = "auto") -> None:
        self.mode = check_mode(mode)
        self.tokenizer = tok
        self.stats = CacheStats()
        self._marker_ids = dict(tok.tool_marker_ids)
        self._stop_ids = list(stop_ids)
        self._compiler: Any = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _get_compiler(self) -> Any:
        if self._compiler is None:
            xgr = _xgrammar()
            info = xgr.TokenizerInfo(
                encoded_vocab(self.tokenizer),
                xgr.VocabType.RAW,
                vocab_size=self.tokenizer.vocab_size,
                stop_token_ids=self._stop_ids,
            )
            # Our LRU bounds memory; xgrammar's own cache would be a second, unbounded one.
            self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        return self._compiler

    def spec(self, tools: Sequence[Any] | None, tool_choice: Any) -> GrammarSpec | None:
        """The request's grammar spec under this mode (None: unconstrained)."""
        if self.mode == "off":
            return None
        return spec_for(tools, tool_choice, self.mode, self._marker_ids)

    def factory(self, tools: Sequence[Any] | None, tool_choice: Any) -> MaskFactory | None:
        """The compiled grammar for one request; SchemaRejected (400) names the tool at fault."""
        spec = self.spec(tools, tool_choice)
        if spec is None:
            return None
        return MaskFactory(self.compile(spec, tools), self.tokenizer.vocab_size, spec)

    def from_tag(self, tag: str) -> MaskFactory:
        """A structural tag made by `spec_for` elsewhere (the Triton preprocessing model)."""
        spec = GrammarSpec(tag, hashlib.sha256(tag.encode()).hexdigest(), 0)
        try:
            compiled = self.compile(spec)
        except SchemaRejected as exc:
            raise SchemaRejected(
                str(exc).replace("tools: ", "", 1), "guided_decoding_guide"
            ) from None
        return MaskFactory(compiled, self.tokenizer.vocab_size, spec)

    def compile(self, spec: GrammarSpec, tools: Sequence[Any] | None = None) -> Any:
        """The compiled grammar of `spec`, from the cache when this tool set was seen."""
        with self._lock:
            hit = self._cache.get(spec.key)
            if hit is not None:
                self._cache.move_to_end(spec.key)
                self.stats.hits += 1
                return hit
            compiler = self._get_compiler()
            start = time.perf_counter()
            try:
                compiled = compiler.compile_structural_tag(spec.tag)
            except Exception as exc:
                raise self._blame(exc, tools) from None
            took = time.perf_counter() - start
            self.stats.misses += 1
            self.stats.compile_s += took
            self.stats.last_compile_s = took
            self._cache[spec.key] = compiled
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return compiled

    def _blame(self, exc: Exception, tools: Sequence[Any] | None) -> SchemaRejected:
        """A compile failure as a 400 naming the first tool whose schema alone fails."""
        compiler = self._get_compiler()
        for i, fn in enumerate(functions_of(tools)):
            if fn.parameters is None or fn.strict is False:
                continue
            try:
                compiler.compile_json_schema(fn.parameters)
            except Exception as sub:
                return SchemaRejected(f"tools[{i}] ({fn.name}): parameters: {_one_line(sub)}")
        return SchemaRejected(f"tools: cannot build the tool-call grammar ({_one_line(exc)})")
