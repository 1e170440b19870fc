"""KimiTokenizer.encode throughput vs raw tiktoken, and the time to encode a long prompt.

    python bench/tokenizer_bench.py [--mb 10] [--prompt-tokens 262144] [--runs 3]

Builds the synthetic tokenizer (write_tokenizer: 1,280 BPE ranks, real Kimi regex and
special layout) in a temp dir, then:
  1. encode MB/s of KimiTokenizer.encode (upstream's 400k/25k pre-split + tiktoken) vs
     tiktoken.Encoding.encode_ordinary with the same ranks and regex on one ~10 MB mixed
     text (target ratio >= 0.8);
  2. wall time to encode (and encode_with_specials) a prompt of ~256K tokens;
  3. decode and streaming-decode rates, for scale.
The tiny vocabulary makes tokens short (~2 bytes), so absolute MB/s is lower than with the
real 163,840-token vocabulary; the ratio is the figure that carries over.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _util import MB, best_of, doc_summary, print_table, timed
from k2trt.chat.prompt import encode_chat
from k2trt.chat.template import builtin_template
from k2trt.chat.tokenizer import KimiTokenizer
from k2trt.synth.sample_text import SAMPLE_TEXT
from k2trt.synth.tokenizer import write_tokenizer

THROUGHPUT_TARGET = 0.8

# Kinds of text the sample lacks or has little of: long whitespace, CRLF, digits, markup.
_EXTRA = (
    "def handler(request):\r\n    return {'status': 200, 'id': 1234567}\r\n"
    + " " * 300
    + "\n| col | 12.5 | 3,000,000 |\n"
    + "I'll say it: DON'T. 你好世界\uff0c今天天气很好\u3002🎉👍🏽\n"
)


def mixed_text(target_bytes: int) -> str:
    """~`target_bytes` of UTF-8: the built-in sample interleaved with extra snippets."""
    unit = SAMPLE_TEXT + _EXTRA
    reps = max(1, target_bytes // len(unit.encode()))
    return "".join(f"{unit}\n[{i}]\n" for i in range(reps))


def prompt_of(tok: KimiTokenizer, text: str, tokens: int) -> str:
    """A prefix of `text` that encodes to about `tokens` tokens."""
    per_char = len(tok.encode(text[:200_000])) / 200_000
    return text[: int(tokens / per_char)]


def throughput(tok: KimiTokenizer, text: str, runs: int) -> tuple[float, float]:
    size = len(text.encode()) / MB
    raw = tok.encoding.encode_ordinary
    ours = best_of(runs, lambda: tok.encode(text))
    base = best_of(runs, lambda: raw(text))
    return size / ours, size / base


def stream_rate(tok: KimiTokenizer, ids: list[int]) -> float:
    """Tokens/s through an IncrementalDecoder fed one token at a time."""

    def run() -> None:
        dec = tok.incremental_decoder()
        for i in ids:
            dec.feed((i,))
        dec.flush()

    return len(ids) / best_of(1, run)


def render_and_encode(tok: KimiTokenizer, prompt: str) -> tuple[float, int]:
    """Seconds to render (built-in v3 template) and safely encode `prompt` as a 64-turn chat."""
    step = max(1, len(prompt) // 64)
    roles = ("user", "assistant")
    messages = [
        {"role": roles[i % 2], "content": prompt[at : at + step]}
        for i, at in enumerate(range(0, len(prompt), step))
    ]
    template = builtin_template("kimi-k2-instruct-0905")
    secs, encoded = timed(lambda: encode_chat(tok, template, messages))
    return secs, len(encoded.ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--mb", type=float, default=10.0, help="size of the mixed text")
    parser.add_argument("--prompt-tokens", type=int, default=256 * 1024)
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tok = KimiTokenizer.from_dir(tmp)
    text = mixed_text(int(args.mb * MB))
    ids = tok.encode(text)
    ours, base = throughput(tok, text, args.runs)
    size = len(text.encode()) / MB
    print(f"synthetic tokenizer: {tok.num_base_tokens} BPE ranks (real Kimi K2: 163,584), so")
    print(f"tokens are short: {len(text.encode()) / len(ids):.2f} bytes/token on this text.")
    print("(The 400k-char chunking makes a few ids differ from raw tiktoken at the seams.)")
    ratio = ours / base
    verdict = "ok" if ratio >= THROUGHPUT_TARGET else "BELOW TARGET"
    print_table(
        f"encode, {size:.1f} MB mixed text, best of {args.runs}",
        ["path", "MB/s", "ratio"],
        [
            ["tiktoken encode_ordinary", f"{base:.2f}", "1.00"],
            ["KimiTokenizer.encode", f"{ours:.2f}", f"{ratio:.2f} ({verdict}, >= 0.8)"],
        ],
    )
    prompt = prompt_of(tok, text, args.prompt_tokens)
    secs, prompt_ids = timed(lambda: tok.encode(prompt))
    secs_sp, _ = timed(lambda: tok.encode_with_specials(prompt))
    dec_secs, _ = timed(lambda: tok.decode(ids))
    chat_secs, chat_tokens = render_and_encode(tok, prompt)
    print_table(
        "long prompt and decoding",
        ["what", "size", "seconds", "rate"],
        [
            ["encode prompt", f"{len(prompt_ids):,} tok", f"{secs:.3f}", ""],
            ["encode_with_specials", f"{len(prompt_ids):,} tok", f"{secs_sp:.3f}", ""],
            ["render + encode chat", f"{chat_tokens:,} tok", f"{chat_secs:.3f}", ""],
            ["decode", f"{len(ids):,} tok", f"{dec_secs:.3f}", f"{size / dec_secs:.0f} MB/s"],
            [
                "stream 1 tok/feed",
                f"{len(prompt_ids):,} tok",
                "",
                f"{stream_rate(tok, prompt_ids) / 1e6:.2f} M tok/s",
            ],
        ],
    )


if __name__ == "__main__":
    main()
