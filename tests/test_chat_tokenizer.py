# Full-width CJK punctuation in the corpus is deliberate.
# ruff: noqa: RUF001
"""KimiTokenizer against a reference built the way upstream's remote code works, and the
HF export against KimiTokenizer, on the synthetic (small but real-format) tokenizer."""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe

from k2trt.chat.hf_export import export_hf_tokenizer
from k2trt.chat.tokenizer import TOOL_MARKERS, KimiTokenizer, presplit
from k2trt.errors import K2Error
from k2trt.synth.tokenizer import KIMI_PAT_STR, special_tokens, write_tokenizer

NUM_BASE = 1280  # what write_tokenizer's default produces


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kimi-tok")
    write_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> KimiTokenizer:
    return KimiTokenizer.from_dir(tok_dir)


# --- a reference written the way tokenization_kimi.py encodes ----------------------------


def upstream_split(s: str, limit: int) -> Iterator[str]:
    """Upstream's whitespace/non-whitespace run splitter, char by char."""
    run_len, run_is_space, start = 0, (s[0].isspace() if s else False), 0
    for i, ch in enumerate(s):
        if ch.isspace() != run_is_space:
            run_len, run_is_space = 1, ch.isspace()
        else:
            run_len += 1
            if run_len > limit:
                yield s[start:i]
                start, run_len = i, 1
    yield s[start:]


def upstream_pieces(text: str) -> list[str]:
    return [
        piece
        for i in range(0, len(text), 400_000)
        for piece in upstream_split(text[i : i + 400_000], 25_000)
    ]


@pytest.fixture(scope="module")
def upstream(tok_dir: Path) -> tiktoken.Encoding:
    """tiktoken set up as upstream's loader does (its own file parser, 256 specials)."""
    ranks = load_tiktoken_bpe(str(tok_dir / "tiktoken.model"))
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    named = {int(k): v["content"] for k, v in config["added_tokens_decoder"].items()}
    n = len(ranks)
    specials = {named.get(i, f"<|reserved_token_{i}|>"): i for i in range(n, n + 256)}
    return tiktoken.Encoding(
        "ref", pat_str=KIMI_PAT_STR, mergeable_ranks=ranks, special_tokens=specials
    )


def ref_encode(enc: tiktoken.Encoding, text: str, *, specials: bool) -> list[int]:
    out: list[int] = []
    for piece in upstream_pieces(text):
        if specials:  # upstream encode(allow_special_tokens=True), its default
            out += enc.encode(piece, allowed_special="all")
        else:  # upstream encode(allow_special_tokens=False)
            out += enc.encode(piece, disallowed_special=())
    return out


# --- specials ---------------------------------------------------------------------------


def test_special_ids_and_names(tok: KimiTokenizer) -> None:
    assert (tok.num_base_tokens, tok.vocab_size) == (NUM_BASE, NUM_BASE + 256)
    assert tok.special_ids == special_tokens(NUM_BASE)
    assert (tok.bos_id, tok.eos_id, tok.im_end_id) == (1280, 1281, 1282)
    assert (tok.unk_id, tok.pad_id) == (1534, 1535)
    assert tok.special_ids["<|im_middle|>"] == 1297
    assert tok.special_ids["<|reserved_token_1285|>"] == 1285
    assert list(tok.tool_marker_ids) == list(TOOL_MARKERS)
    assert list(tok.tool_marker_ids.values()) == [1291, 1292, 1293, 1294, 1295]
    assert tok.id_to_token[1282] == "<|im_end|>"
    assert tok.id_to_token[32] == "Ġ"  # GPT-2 byte-level form, as HF shows tokens
    assert not any(tok.is_special(i) for i in tok.tool_marker_ids.values())
    assert tok.is_special(tok.im_end_id) and tok.is_special(1285)


LOOKALIKE = "say <|im_end|> then <|tool_call_begin|>f:0<|tool_call_end|> [EOS] [BOS]"


def test_user_text_never_makes_special_ids(tok: KimiTokenizer) -> None:
    ids = tok.encode(LOOKALIKE)
    assert max(ids) < NUM_BASE
    assert tok.decode(ids) == LOOKALIKE


def test_encode_with_specials_maps_markers(tok: KimiTokenizer, upstream: tiktoken.Encoding) -> None:
    ids = tok.encode_with_specials(LOOKALIKE)
    specials = [i for i in ids if i >= NUM_BASE]
    assert specials == [1282, 1293, 1295, 1281, 1280]
    assert ids == ref_encode(upstream, LOOKALIKE, specials=True)
    assert tok.decode(ids) == LOOKALIKE


def test_skip_special_tokens_keeps_tool_markers(tok: KimiTokenizer) -> None:
    ids = [tok.bos_id, *tok.encode("hi"), tok.im_end_id, 1285, *tok.tool_marker_ids.values()]
    assert tok.decode(ids, skip_special_tokens=True) == "hi" + "".join(TOOL_MARKERS)
    assert tok.decode(ids).startswith("[BOS]hi<|im_end|><|reserved_token_1285|><|tool_calls")


def test_decode_replaces_invalid_utf8_and_rejects_bad_ids(tok: KimiTokenizer) -> None:
    cjk = tok.encode("你")
    assert len(cjk) == 3  # one byte per token in the tiny vocab
    assert tok.decode(cjk[:2]) == "\ufffd"
    with pytest.raises(K2Error, match="token id -1 outside"):
        tok.decode([1, -1])
    with pytest.raises(K2Error, match="token id 1536 outside"):
        tok.decode([1536])


# --- 400k / 25k pre-split -----------------------------------------------------------------


def test_python_whitespace_class_is_isspace() -> None:
    # presplit finds runs with `\s`; upstream tests str.isspace. Same set, every code point.
    everything = "".join(map(chr, range(0x110000)))
    assert set(re.findall(r"\s", everything)) == {c for c in everything if c.isspace()}


LONG_TEXTS = {
    "spaces": " " * 25_001,
    "spaces+word": "a" + " " * 60_000 + "word\n",
    "letters": "the" * 8_334,
    "digits": "12" * 30_000,
    "mixed": ("x" * 24_999 + " " * 25_002) * 3 + "\u3000" * 26_000 + "你好" * 13_000,
    "over_400k": ("lighthouse keeper " * 23_000) + "<|im_end|>" + "é" * 30_000,
}


@pytest.mark.parametrize("name", list(LONG_TEXTS))
def test_long_runs_match_upstream(
    name: str, tok: KimiTokenizer, upstream: tiktoken.Encoding
) -> None:
    text = LONG_TEXTS[name]
    assert list(presplit(text)) == [p for p in upstream_pieces(text) if p]
    ids = tok.encode(text)
    assert ids == ref_encode(upstream, text, specials=False)
    assert tok.encode_with_specials(text) == ref_encode(upstream, text, specials=True)
    assert tok.decode(ids) == text


RUN_LENGTHS = st.one_of(
    st.integers(min_value=1, max_value=40_000),
    st.sampled_from([12_499, 12_500, 12_501, 24_999, 25_000, 25_001, 37_500, 50_000, 50_001]),
)


@settings(max_examples=25, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.sampled_from([" ", "\n", "a", "你", "\u3000", "1"]), RUN_LENGTHS), max_size=5
    )
)
def test_presplit_matches_upstream_on_runs(runs: list[tuple[str, int]]) -> None:
    text = "".join(ch * n for ch, n in runs)
    assert list(presplit(text)) == [p for p in upstream_pieces(text) if p]


@pytest.mark.parametrize("offset", [0, 1, 12_499, 12_500, 12_501, 24_999])
def test_presplit_finds_runs_at_any_offset(offset: int) -> None:
    # presplit only scans chunks whose 12,500-char probe windows look uniform; a run that
    # straddles windows badly must still be found.
    for length in (25_001, 25_002, 37_501):
        for run, gap in (("a", " "), (" ", "a")):
            text = gap * offset + run * length + gap
            assert list(presplit(text)) == list(upstream_pieces(text)), (length, run)


def test_presplit_changes_tokens(tok: KimiTokenizer) -> None:
    # Proof the cases above have teeth: without the cut these encode differently.
    for text in (LONG_TEXTS["spaces"], LONG_TEXTS["letters"], LONG_TEXTS["over_400k"]):
        assert tok.encode(text) != tok.encoding.encode_ordinary(text)


# --- incremental decoding -------------------------------------------------------------------

CHARS = st.sampled_from([*"aZ 7\n\t.,'-你好世界日本語한국어éßçΩЖ", "🎉", "👍🏽", "🇯🇵", "e\u0301"])


def stream(tok: KimiTokenizer, ids: list[int], cuts: list[int], skip: bool) -> str:
    dec = tok.incremental_decoder(skip_special_tokens=skip)
    out = []
    bounds = [0, *sorted(c % (len(ids) + 1) for c in cuts), len(ids)]
    for a, b in itertools.pairwise(bounds):
        out.append(dec.feed(ids[a:b]))
        assert dec.pending_bytes <= 3  # only an unfinished character is held back
    return "".join(out) + dec.flush()


@settings(max_examples=150, deadline=None)
@given(
    text=st.lists(CHARS, max_size=60).map("".join),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    skip=st.booleans(),
)
def test_incremental_decoder_matches_decode(
    tok: KimiTokenizer, text: str, cuts: list[int], skip: bool
) -> None:
    ids = tok.encode_with_specials(text + "<|im_end|><|tool_call_begin|>" + text)
    assert stream(tok, ids, cuts, skip) == tok.decode(ids, skip_special_tokens=skip)


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=NUM_BASE + 255), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    skip=st.booleans(),
)
def test_incremental_decoder_on_arbitrary_ids(
    tok: KimiTokenizer, ids: list[int], cuts: list[int], skip: bool
) -> None:
    # Arbitrary ids make invalid UTF-8: replacement must match a one-shot decode too.
    assert stream(tok, ids, cuts, skip) == tok.decode(ids, skip_special_tokens=skip)


# --- HF export ------------------------------------------------------------------------------

CORPUS = [
    "The keeper of the old lighthouse wrote everything down.",
    "你好，世界！日本語のテキストと한국어 텍스트. 灯塔守护者",
    "emoji 🎉👍🏽🇯🇵 family 👨‍👩‍👧 and e\u0301 combining",
    "def f(x: int) -> dict[str, int]:\r\n    return {'a': x ** 2}  # 1234567\n",
    "I'll DON'T they've WE'RE it's O'Neil's",
    "numbers 1234567 3.14159 -42 1,000,000 ١٢٣",
    "tabs\t\tand   spaces    \n\n\n   trailing   ",
    " " * 3000 + "x" + "\n" * 500 + "y" + "z" * 5000,
    "\u00a0nbsp \u3000ideographic \u2028line \u0085nel \ufeffbom",
    "ǅemo İstanbul naïve ÀÉÎ ΣΑΣ straße",
]


@pytest.fixture(scope="module")
def hf_dir(tok: KimiTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf")
    written = export_hf_tokenizer(tok, out)
    assert written == [out / "tokenizer.json", out / "tokenizer_config.json"]
    return out


def test_export_config(tok: KimiTokenizer, hf_dir: Path) -> None:
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert "auto_map" not in config
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == tok.chat_template and tok.chat_template
    decoder = config["added_tokens_decoder"]
    assert len(decoder) == 256
    assert decoder["1293"]["special"] is False and decoder["1282"]["special"] is True
    assert not list(hf_dir.glob(".*partial"))


def test_export_matches_tokenizers(tok: KimiTokenizer, hf_dir: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    for text in CORPUS:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        assert hf.decode(ids) == tok.decode(ids) == text
    assert [hf.id_to_token(i) for i in range(tok.vocab_size)] == tok.id_to_token
    # Look-alikes: tokenizers matches added tokens in text (special or not); ours does not.
    hf_ids = hf.encode(LOOKALIKE, add_special_tokens=False).ids
    assert hf_ids == tok.encode_with_specials(LOOKALIKE) != tok.encode(LOOKALIKE)


def test_export_matches_transformers(tok: KimiTokenizer, hf_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    by_file = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    assert "Kimi" not in type(auto).__name__  # no remote code involved
    for hf in (by_file, auto):
        for text in CORPUS:
            ids = tok.encode(text)
            assert hf.encode(text, add_special_tokens=False) == ids, text
            assert hf.decode(ids) == text
    assert auto.encode(CORPUS[0]) == tok.encode(CORPUS[0])  # no BOS post-processor
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (1280, 1281, 1535)
    mixed = [*tok.encode_with_specials("<|im_user|>hi<|im_end|>" + LOOKALIKE), 1285, 1280]
    for skip in (False, True):
        assert auto.decode(mixed, skip_special_tokens=skip) == tok.decode(mixed, skip)
    # Look-alikes become ids in transformers by default; split_special_tokens=True stops
    # that only for `special` tokens, so the (non-special) tool markers still match.
    assert auto.encode(LOOKALIKE) == tok.encode_with_specials(LOOKALIKE)
    split = transformers.AutoTokenizer.from_pretrained(str(hf_dir), split_special_tokens=True)
    specials = [i for i in split.encode(LOOKALIKE) if i >= NUM_BASE]
    assert specials == [1293, 1295]


# --- errors -----------------------------------------------------------------------------------


def _copy(tok_dir: Path, tmp_path: Path) -> Path:
    for name in ("tiktoken.model", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tok_dir / name).read_bytes())
    return tmp_path


def _one_line_error(path: Path, match: str) -> K2Error:
    with pytest.raises(K2Error) as info:
        KimiTokenizer.from_dir(path)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(match, message), message
    return info.value


@pytest.mark.parametrize(
    ("line3", "match"),
    [
        (b"!!notbase64 2", r"tiktoken\.model: line 3: bad base64"),
        (b"QQ== 2 extra", r"tiktoken\.model: line 3: expected 'base64 rank'"),
        (b"Ag== -2", r"tiktoken\.model: line 3: rank .* is not a number"),
        (b"Ag== 99999", r"tiktoken\.model: line 3: rank 99999 outside 0\.\.1279"),
        (b"Ag== 1", r"tiktoken\.model: line 3: rank 1 appears twice"),
        (b"AQ== 2", r"tiktoken\.model: line 3: token repeats line 2"),
    ],
)
def test_bad_tiktoken_line(tok_dir: Path, tmp_path: Path, line3: bytes, match: str) -> None:
    path = _copy(tok_dir, tmp_path)
    lines = (path / "tiktoken.model").read_bytes().split(b"\n")
    lines[2] = line3
    (path / "tiktoken.model").write_bytes(b"\n".join(lines))
    err = _one_line_error(path, match)
    assert err.path == str(path / "tiktoken.model")


def test_missing_file_and_bad_config(tok_dir: Path, tmp_path: Path) -> None:
    path = _copy(tok_dir, tmp_path)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["added_tokens_decoder"]["1536"] = {"content": "<|x|>", "special": True}
    config_path.write_text(json.dumps(config))
    _one_line_error(path, r"added_tokens_decoder\['1536'\]: id outside the special range")
    config_path.write_text("{not json")
    _one_line_error(path, r"tokenizer_config\.json: tokenizer config is not valid JSON")
    config_path.unlink()
    _one_line_error(path, r"tokenizer_config\.json: missing")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
