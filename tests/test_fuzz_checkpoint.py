"""Fuzzing the checkpoint readers: shard headers, the index and config.json of a tiny synth
checkpoint, mutated by hypothesis (derandomized, bounded). Every input is either accepted or
refused with a K2Error whose message is one capped line naming a file of the checkpoint; never
another exception, a hang or unbounded memory.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k2trt.checkpoint.inspection import InspectOptions, inspect_checkpoint
from k2trt.checkpoint.reader import INDEX_NAME
from k2trt.errors import MAX_LINE, MAX_PATH, K2Error
from k2trt.fsutil import parse_json

S1 = "model-1-of-3.safetensors"
FUZZ = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# JSON values, hostile ones included: huge and negative ints, NaN/Infinity, nesting, odd text.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 1, 2**63, 10**400, 10**4000])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["F32", "BF16", "F8_E4M3", "I8", "", "x" * 5000, "a\nb", "\x00"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def work(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the tiny checkpoint; each example changes one file and puts it back."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path_factory.mktemp("fuzz") / "ckpt"))


def check(ckpt: Path) -> None:
    """Accepted, or one capped line naming a file in the checkpoint."""
    try:
        inspect_checkpoint(ckpt, InspectOptions(deep=True))
    except K2Error as exc:
        text = str(exc)
        assert text.isprintable(), text  # one line: control characters are escaped
        text.encode("utf-8")  # printable to any UTF-8 stderr (no lone surrogates)
        assert len(text) <= MAX_LINE + MAX_PATH + 2, len(text)
        assert exc.path is not None and exc.path.startswith(str(ckpt)), text


@contextmanager
def mutate(path: Path, edit: Callable[[bytes], bytes]) -> Iterator[None]:
    original = path.read_bytes()
    try:
        path.write_bytes(edit(original))
        yield
    finally:
        path.write_bytes(original)


def split_shard(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join_shard(header_text: bytes, data: bytes) -> bytes:
    header_text += b" " * (-len(header_text) % 8)
    return struct.pack("<Q", len(header_text)) + header_text + data


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


# ---------------------------------------------------------------------------------------------
# Shard headers


HEADER_EDITS = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(["dtype", "shape", "data_offsets"]), JSON),
    st.tuples(st.just("entry"), st.just(""), JSON),
    st.tuples(st.just("metadata"), st.just(""), JSON),
    st.tuples(st.just("extra"), st.text(max_size=30), JSON),
    st.tuples(st.just("deep"), st.just(""), st.integers(min_value=100, max_value=3000)),
)


@FUZZ
@given(edit=HEADER_EDITS, which=st.integers(min_value=0, max_value=10**6))
def test_fuzz_shard_header(work: Path, edit: tuple[str, str, Any], which: int) -> None:
    kind, key, value = edit

    def apply(blob: bytes) -> bytes:
        header, data = split_shard(blob)
        names = sorted(k for k in header if k != "__metadata__")
        name = names[which % len(names)]
        if kind == "field":
            header[name][key] = value
        elif kind == "entry":
            header[name] = value
        elif kind == "metadata":
            header["__metadata__"] = value
        elif kind == "extra":
            header[key or "k"] = value
        else:
            text = dumps(header)[:-1] + b', "deep": ' + _nested(value).encode() + b"}"
            return join_shard(text, data)
        return join_shard(dumps(header), data)

    with mutate(work / S1, apply):
        check(work)


@FUZZ
@given(
    start=st.integers(min_value=0, max_value=4000),
    junk=st.binary(min_size=1, max_size=64),
    length=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
)
def test_fuzz_shard_bytes(work: Path, start: int, junk: bytes, length: int | None) -> None:
    def apply(blob: bytes) -> bytes:
        out = blob[:start] + junk + blob[start + len(junk) :]
        return out if length is None else struct.pack("<Q", length) + out[8:]

    with mutate(work / S1, apply):
        check(work)


# ---------------------------------------------------------------------------------------------
# The index


INDEX_EDITS = st.one_of(
    st.tuples(st.just("shard"), JSON),
    st.tuples(st.just("metadata"), JSON),
    st.tuples(st.just("weight_map"), JSON),
    st.tuples(st.just("root"), JSON),
    st.tuples(
        st.just("name"),
        st.sampled_from(
            ["m" * 300, "a\x00b", S1 + "/", "/etc/passwd", "../x", ".", "", "model.safetensors"]
        ),
    ),
    st.tuples(st.just("deep"), st.integers(min_value=100, max_value=3000)),
)


@FUZZ
@given(edit=INDEX_EDITS, which=st.integers(min_value=0, max_value=10**6))
def test_fuzz_index(work: Path, edit: tuple[str, Any], which: int) -> None:
    kind, value = edit

    def apply(blob: bytes) -> bytes:
        index = json.loads(blob)
        names = sorted(index["weight_map"])
        name = names[which % len(names)]
        if kind in ("shard", "name"):
            index["weight_map"][name] = value
        elif kind in ("metadata", "weight_map"):
            index[kind] = value
        elif kind == "root":
            index = value
        else:
            return dumps(index)[:-1] + b', "deep": ' + _nested(value).encode() + b"}"
        return dumps(index)

    with mutate(work / INDEX_NAME, apply):
        check(work)


# ---------------------------------------------------------------------------------------------
# config.json


CONFIG_KEYS = [
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "n_routed_experts",
    "num_nextn_predict_layers",
    "num_experts_per_tok",
    "first_k_dense_replace",
    "moe_layer_freq",
    "n_group",
    "topk_group",
    "q_lora_rank",
    "vocab_size",
    "rope_theta",
    "rope_scaling",
    "quantization_config",
    "eos_token_id",
    "max_position_embeddings",
    "tie_word_embeddings",
    "text_config",
]
SIZES = st.sampled_from([0, 1, 2, 3, 7, 10**9, 10**400, -1, 2**31])


@FUZZ
@given(
    key=st.sampled_from(CONFIG_KEYS),
    value=st.one_of(JSON, SIZES, st.just("DELETE")),
    sub=st.sampled_from(["factor", "original_max_position_embeddings", "weight_block_size", ""]),
)
def test_fuzz_config(work: Path, key: str, value: Any, sub: str) -> None:
    def apply(blob: bytes) -> bytes:
        cfg = json.loads(blob)
        if value == "DELETE":
            cfg.pop(key, None)
        elif sub and isinstance(cfg.get(key), dict):
            cfg[key][sub] = value
        else:
            cfg[key] = value
        return dumps(cfg)

    with mutate(work / "config.json", apply):
        check(work)


@FUZZ
@given(text=st.text(max_size=200), depth=st.integers(min_value=0, max_value=2000))
def test_fuzz_config_text(work: Path, text: str, depth: int) -> None:
    def apply(blob: bytes) -> bytes:
        return (
            blob[: len(blob) // 2] + text.encode("utf-8", "surrogatepass") + _nested(depth).encode()
        )

    with mutate(work / "config.json", apply):
        check(work)


# ---------------------------------------------------------------------------------------------
# The small-JSON reader every config-like file goes through (generation_config.json included)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=200),
        JSON.map(dumps),
        st.integers(min_value=0, max_value=5000).map(lambda d: _nested(d).encode()),
        st.integers(min_value=4000, max_value=6000).map(lambda n: b"1" * n),
    )
)
def test_fuzz_small_json(data: bytes) -> None:
    try:
        parse_json(data, "generation_config.json", "generation config")
    except K2Error as exc:
        assert str(exc).startswith("generation_config.json: ") and str(exc).isprintable()
        assert len(str(exc)) <= MAX_LINE + MAX_PATH + 2
