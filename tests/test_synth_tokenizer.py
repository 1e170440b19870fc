"""The synthetic Kimi K2 tokenizer: deterministic files that real tiktoken/transformers load."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

tiktoken = pytest.importorskip("tiktoken")
chat_utils = pytest.importorskip("transformers.utils.chat_template_utils")

from tiktoken.load import load_tiktoken_bpe  # noqa: E402

from k2trt.chat.revisions import known_revision  # noqa: E402
from k2trt.synth.sample_text import SAMPLE_TEXT  # noqa: E402
from k2trt.synth.tokenizer import (  # noqa: E402
    KIMI_PAT_STR,
    NUM_RESERVED_SPECIAL_TOKENS,
    TokenizerInfo,
    default_chat_template,
    special_tokens,
    train_byte_bpe,
    write_tokenizer,
)

# Offsets from num_base_tokens as in moonshotai/Kimi-K2-Instruct (163584 + offset).
REAL_OFFSETS = {
    "[BOS]": 0,
    "[EOS]": 1,
    "<|im_end|>": 2,
    "<|im_user|>": 3,
    "<|im_assistant|>": 4,
    "<|start_header_id|>": 6,
    "<|end_header_id|>": 7,
    "[EOT]": 9,
    "<|im_system|>": 10,
    "<|tool_calls_section_begin|>": 11,
    "<|tool_calls_section_end|>": 12,
    "<|tool_call_begin|>": 13,
    "<|tool_call_argument_begin|>": 14,
    "<|tool_call_end|>": 15,
    "<|im_middle|>": 17,
    "[UNK]": 254,
    "[PAD]": 255,
}
TOOL_MARKERS = {
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
}
MIXED_TEXT = (
    "The keeper wrote it down. 灯塔上的守护人 and トークナイザー, 데이터 🚀👍🏽 done!\n"
    "def load_index(path: Path) -> dict[str, str]:\n        return {}\n"
    "x = 163584 + 256\t\t\n\n\n" + " " * 37 + "tail   \r\n"
)


@pytest.fixture(autouse=True)
def _no_tiktoken_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_tiktoken_bpe caches by *path*; a reused tmp path would read stale ranks.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TokenizerInfo]:
    out = tmp_path_factory.mktemp("tok")
    return out, write_tokenizer(out)


def _encoding(out: Path, info: TokenizerInfo) -> Any:
    ranks = load_tiktoken_bpe(str(out / "tiktoken.model"))
    return tiktoken.Encoding(
        name="synthetic-kimi",
        pat_str=KIMI_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=special_tokens(info.num_base_tokens),
    )


def _config(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "tokenizer_config.json").read_text("utf-8"))
    return data


def test_files_are_byte_identical_across_writes(
    written: tuple[Path, TokenizerInfo], tmp_path: Path
) -> None:
    first, info = written
    again = write_tokenizer(tmp_path)
    assert again == info
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    assert names == ["tiktoken.model", "tokenizer_config.json"]
    for name in names:
        assert (first / name).read_bytes() == (tmp_path / name).read_bytes()


def test_tiktoken_model_loads_with_expected_ranks(written: tuple[Path, TokenizerInfo]) -> None:
    out, info = written
    ranks = load_tiktoken_bpe(str(out / "tiktoken.model"))
    assert len(ranks) == 256 + 1024 == info.num_base_tokens
    assert sorted(ranks.values()) == list(range(len(ranks)))
    assert all(ranks[bytes([b])] == b for b in range(256))


def test_num_merges_controls_rank_count(tmp_path: Path) -> None:
    info = write_tokenizer(tmp_path, num_merges=40)
    assert info.num_base_tokens == 296
    assert len(load_tiktoken_bpe(str(tmp_path / "tiktoken.model"))) == 296
    assert info.vocab_size == 296 + 256


def _isolated_bpe(piece: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    parts = [bytes([b]) for b in piece]
    while True:
        found = [
            (ranks[a + b], i)
            for i, (a, b) in enumerate(itertools.pairwise(parts))
            if ranks.get(a + b, below) < below
        ]
        if not found:
            return parts
        _, i = min(found)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def test_every_merged_token_is_reachable_from_two_parents() -> None:
    tokens = train_byte_bpe(SAMPLE_TEXT, 1024)
    ranks = {tok: rank for rank, tok in enumerate(tokens)}
    for rank in range(256, len(tokens)):
        parts = _isolated_bpe(tokens[rank], ranks, below=rank)
        assert len(parts) == 2, (rank, tokens[rank], parts)


def test_mixed_text_round_trips_exactly(written: tuple[Path, TokenizerInfo]) -> None:
    enc = _encoding(*written)
    ids = enc.encode(MIXED_TEXT, disallowed_special=())
    assert enc.decode(ids) == MIXED_TEXT
    assert enc.decode_bytes(ids) == MIXED_TEXT.encode("utf-8")


def test_multi_byte_merges_fire(written: tuple[Path, TokenizerInfo]) -> None:
    enc = _encoding(*written)
    for text in (" the keeper", " watching", "我们的数据", "def load_index(path"):
        assert len(enc.encode(text)) < len(text.encode("utf-8")), text
    assert enc.encode(" the") == [enc.encode_single_token(b" the")]


def test_special_tokens_encode_to_their_ids(written: tuple[Path, TokenizerInfo]) -> None:
    out, info = written
    enc = _encoding(out, info)
    ids = enc.encode("hi<|im_end|>", allowed_special="all")
    assert ids[-1] == info.im_end_id
    assert enc.n_vocab == info.vocab_size


def test_special_ids_match_real_offsets(written: tuple[Path, TokenizerInfo]) -> None:
    out, info = written
    base = info.num_base_tokens
    assert (info.bos_token_id, info.eos_token_id, info.im_end_id) == (base, base + 1, base + 2)
    assert info.pad_token_id == base + 255
    assert info.vocab_size == base + NUM_RESERVED_SPECIAL_TOKENS == base + 256
    decoder = _config(out)["added_tokens_decoder"]
    assert {entry["content"]: int(k) for k, entry in decoder.items()} == {
        name: base + offset for name, offset in REAL_OFFSETS.items()
    }
    for entry in decoder.values():
        assert entry["special"] is (entry["content"] not in TOOL_MARKERS)
        flags = [entry[k] for k in ("lstrip", "normalized", "rstrip", "single_word")]
        assert flags == [False, False, False, False]


def test_reserved_specials_fill_the_256_slots() -> None:
    specials = special_tokens(1000)
    assert len(specials) == 256
    assert sorted(specials.values()) == list(range(1000, 1256))
    assert specials["<|reserved_token_1005|>"] == 1005
    assert specials["<|reserved_token_1253|>"] == 1253
    assert specials["[UNK]"] == 1254


def test_tokenizer_config_top_level_fields(written: tuple[Path, TokenizerInfo]) -> None:
    cfg = _config(written[0])
    assert list(cfg) == [
        "added_tokens_decoder",
        "additional_special_tokens",
        "auto_map",
        "bos_token",
        "chat_template",
        "clean_up_tokenization_spaces",
        "eos_token",
        "extra_special_tokens",
        "model_max_length",
        "pad_token",
        "tokenizer_class",
        "unk_token",
    ]
    assert cfg["auto_map"] == {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]}
    assert cfg["tokenizer_class"] == "TikTokenTokenizer"
    assert (cfg["bos_token"], cfg["eos_token"]) == ("[BOS]", "[EOS]")
    assert (cfg["pad_token"], cfg["unk_token"]) == ("[PAD]", "[UNK]")
    assert cfg["additional_special_tokens"][0] == "<|im_end|>"
    assert cfg["chat_template"] == default_chat_template("0711")


def test_custom_chat_template_is_stored(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, num_merges=8, chat_template="{{ messages }}")
    assert _config(tmp_path)["chat_template"] == "{{ messages }}"


def test_bad_merge_counts_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        write_tokenizer(tmp_path, num_merges=-1)
    with pytest.raises(ValueError, match="supports only"):
        write_tokenizer(tmp_path, num_merges=1_000_000)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CONVERSATION: list[dict[str, Any]] = [
    {
        "role": "user",
        "name": "alice",
        "content": [
            {"type": "text", "text": "Weather in "},
            {"type": "text", "text": "Paris?"},
        ],
    },
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "functions.get_weather:0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "functions.get_weather:1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Lyon"}},
            },
        ],
    },
    {
        "role": "tool",
        "tool_call_id": "functions.get_weather:0",
        "name": "get_weather",
        "content": '{"temp": 21}',
    },
    {"role": "tool", "tool_call_id": "functions.get_weather:1", "content": '{"temp": 19}'},
]
# Kimi-K2-Instruct's tool-calling revision (what --release 0711 writes): fixed role names,
# tools as plain `tojson`, the client's ids, results indented by four spaces.
EXPECTED_PROMPT = (
    "<|im_system|>tool_declare<|im_middle|>"
    '[{"type": "function", "function": {"name": "get_weather", "description": "Weather for a '
    'city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]'
    "<|im_end|>"
    "<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI."
    "<|im_end|>"
    "<|im_user|>user<|im_middle|>Weather in Paris?<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|>Checking.<|tool_calls_section_begin|>"
    '<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris"}'
    "<|tool_call_end|>"
    '<|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{"city": "Lyon"}'
    "<|tool_call_end|><|tool_calls_section_end|><|im_end|>"
    '<|im_system|>tool<|im_middle|>## Return of functions.get_weather:0\n    {"temp": 21}'
    "<|im_end|>"
    '<|im_system|>tool<|im_middle|>## Return of functions.get_weather:1\n    {"temp": 19}'
    "<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|>"
)
# Kimi-K2-Instruct-0905 (--release 0905): a "# Tools" heading, and names in place of roles.
EXPECTED_0905_CHANGES = [
    ("tool_declare<|im_middle|>[", "tool_declare<|im_middle|>\n  # Tools\n  ["),
    ("<|im_user|>user<|im_middle|>", "<|im_user|>alice<|im_middle|>"),
    ("<|im_system|>tool<|im_middle|>## Return of functions.get_weather:0",
     "<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:0"),
]  # fmt: skip


def _render(messages: list[dict[str, Any]], release: str = "0711", **kwargs: Any) -> str:
    rendered, _ = chat_utils.render_jinja_template(
        conversations=[messages], chat_template=default_chat_template(release), **kwargs
    )
    text: str = rendered[0]
    return text


def test_chat_template_renders_exact_kimi_prompt() -> None:
    assert _render(CONVERSATION, tools=TOOLS, add_generation_prompt=True) == EXPECTED_PROMPT


def test_0905_chat_template_renders_its_format() -> None:
    expected = EXPECTED_PROMPT
    for old, new in EXPECTED_0905_CHANGES:
        assert expected.count(old) == 1
        expected = expected.replace(old, new)
    got = _render(CONVERSATION, "0905", tools=TOOLS, add_generation_prompt=True)
    assert got == expected


def test_default_chat_template_is_the_release_revision() -> None:
    assert known_revision(default_chat_template()) == "kimi-k2-instruct-0711-tools"
    assert known_revision(default_chat_template("0905")) == "kimi-k2-instruct-0905"


def test_write_tokenizer_stores_the_release_template(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, num_merges=8, release="0905")
    assert known_revision(_config(tmp_path)["chat_template"]) == "kimi-k2-instruct-0905"


def test_chat_template_keeps_a_leading_system_message() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert _render(messages) == (
        "<|im_system|>system<|im_middle|>Be brief.<|im_end|>"
        "<|im_user|>user<|im_middle|>hi<|im_end|>"
    )
