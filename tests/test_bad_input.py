"""Bad input to `k2trt inspect`: every case one line naming the file and the tensor or field.

One pristine tiny checkpoint per session; each test corrupts its own copy. Exit codes: 2 for
input that cannot be read (exactly one `error: ` line on stderr, no traceback), 1 for findings
(listed on stdout), 0 when clean.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli_run import run
from k2trt.checkpoint.reader import INDEX_NAME
from k2trt.checkpoint.safetensors import ShardWriter
from k2trt.cli.app import main
from k2trt.synth.checkpoint import write_checkpoint
from k2trt.synth.presets import SynthOptions

S1 = "model-1-of-3.safetensors"
S2 = "model-2-of-3.safetensors"
S3 = "model-3-of-3.safetensors"
L0 = "model.layers.0"
# Shard 1 holds the embeddings and layer 0 (dense MLP); these are the tensors the cases touch.
Q_A_SCALE = f"{L0}.self_attn.q_a_proj.weight_scale_inv"  # F32 [2, 2]
Q_B_SCALE = f"{L0}.self_attn.q_b_proj.weight_scale_inv"  # F32 [2, 2]
KV_B_SCALE = f"{L0}.self_attn.kv_b_proj.weight_scale_inv"  # F32 [2, 1]: not square
GATE = f"{L0}.mlp.gate_proj.weight"  # F8_E4M3 [512, 256]
DOWN_SCALE = f"{L0}.mlp.down_proj.weight_scale_inv"  # F32 [2, 4], last tensor of shard 1
POST_NORM = f"{L0}.post_attention_layernorm.weight"  # BF16 [256]


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "tiny"
    write_checkpoint(out, SynthOptions(preset="tiny", seed=0))
    return out


@pytest.fixture
def ckpt(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the pristine checkpoint to corrupt."""
    return Path(shutil.copytree(pristine, tmp_path / "ckpt"))


@pytest.fixture(autouse=True)
def _no_env_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K2TRT_DEBUG", raising=False)


def inspect(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["inspect", str(path), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(result: tuple[int, str, str], file: Path, *needles: str) -> str:
    """Exit 2, one `error: <file>: ...` line on stderr containing every needle, no traceback."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"error: {file}: "), line
    assert "internal error" not in line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def assert_findings(result: tuple[int, str, str], *expected: str, count: int = 1) -> list[str]:
    """Exit 1, `count` findings listed on stdout, each expected text inside one of them."""
    code, out, err = result
    assert code == 1, (code, out, err)
    assert "Traceback" not in out + err
    assert err == ""
    assert f"findings     {count}\n" in out, out
    findings = [line[4:] for line in out.splitlines() if line.startswith("  - ")]
    assert len(findings) == count, findings
    for text in expected:
        assert any(text in f for f in findings), (text, findings)
    return findings


def read_shard(path: Path) -> tuple[dict[str, Any], bytes]:
    """A shard's JSON header (key order kept) and its data bytes."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def write_shard(path: Path, header: dict[str, Any], data: bytes) -> None:
    """Write a header as given (re-padded to 8 bytes, length updated) followed by data."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def edit_header(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    header, data = read_shard(path)
    edit(header)
    write_shard(path, header, data)


def data_start(path: Path, name: str) -> int:
    """Absolute file offset of a tensor's first byte."""
    header, _ = read_shard(path)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + n + header[name]["data_offsets"][0]


def rebuild_shard(
    path: Path,
    drop: tuple[str, ...] = (),
    add: tuple[tuple[str, str, tuple[int, ...], bytes], ...] = (),
) -> int:
    """Rewrite a shard with ShardWriter, without `drop`, plus `add`; returns the byte change."""
    header, data = read_shard(path)
    meta = header.pop("__metadata__", None)
    entries: list[tuple[str, str, tuple[int, ...]]] = []
    blobs: list[bytes] = []
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        if name in drop:
            continue
        begin, end = e["data_offsets"]
        entries.append((name, e["dtype"], tuple(e["shape"])))
        blobs.append(data[begin:end])
    for name, dtype, shape, payload in add:
        entries.append((name, dtype, shape))
        blobs.append(payload)
    with ShardWriter(path, entries, metadata=meta) as writer:
        for (name, _, _), blob in zip(entries, blobs, strict=True):
            writer.write(name, np.frombuffer(blob, dtype=np.uint8))
    return sum(len(b) for b in blobs) - len(data)


def load_index(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / INDEX_NAME).read_text())


def save_index(ckpt: Path, index: dict[str, Any]) -> None:
    (ckpt / INDEX_NAME).write_text(json.dumps(index, indent=2))


def patch_f32(path: Path, name: str, value: float, element: int = 0) -> None:
    blob = bytearray(path.read_bytes())
    at = data_start(path, name) + 4 * element
    blob[at : at + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(blob))


# ---------------------------------------------------------------------------------------------
# Positive controls


def test_pristine_is_clean(capsys: pytest.CaptureFixture[str], pristine: Path) -> None:
    code, out, err = inspect(capsys, pristine, "--deep")
    assert (code, err) == (0, "")
    assert "findings     none" in out
    tensors = len(load_index(pristine)["weight_map"])
    assert f"tensors      {tensors} in 3 shards (spec: {tensors})" in out


def test_config_only_directory(capsys: pytest.CaptureFixture[str], pristine: Path, tmp_path: Path):
    only = tmp_path / "config-only"
    only.mkdir()
    shutil.copy(pristine / "config.json", only / "config.json")
    code, out, err = inspect(capsys, only)
    assert (code, err) == (0, "")
    assert re.search(r"^parameters   [\d,]+ stored = weights [\d,]+ ", out, re.M), out
    assert "expected (config only: no weights read)" in out
    assert "findings     none" in out


def test_path_that_does_not_exist(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    assert_error(inspect(capsys, missing), missing, "not a checkpoint directory")


# ---------------------------------------------------------------------------------------------
# 1. The index file


def test_index_missing_with_shards_present(capsys: pytest.CaptureFixture[str], ckpt: Path):
    (ckpt / INDEX_NAME).unlink()
    assert_error(
        inspect(capsys, ckpt), ckpt / INDEX_NAME, "index file is missing but shards are present"
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        pytest.param('{"weight_map": {', "index is not valid JSON", id="not-json"),
        pytest.param('{"metadata": {"total_size": 1}}', "'weight_map'", id="no-weight-map"),
        pytest.param('{"weight_map": []}', "'weight_map'", id="weight-map-not-object"),
        pytest.param('{"weight_map": {}}', "index 'weight_map' is empty", id="empty"),
    ],
)
def test_bad_index(capsys: pytest.CaptureFixture[str], ckpt: Path, text: str, needle: str):
    (ckpt / INDEX_NAME).write_text(text)
    assert_error(inspect(capsys, ckpt), ckpt / INDEX_NAME, needle)


# ---------------------------------------------------------------------------------------------
# 2. Where the index says shards are


def test_index_names_a_missing_shard(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    (ckpt / S2).unlink()
    assert_error(inspect(capsys, ckpt), ckpt / INDEX_NAME, f"shard {S2!r} is missing")


def _remap_shard(ckpt: Path, old: str, new: str) -> None:
    index = load_index(ckpt)
    index["weight_map"] = {k: (new if v == old else v) for k, v in index["weight_map"].items()}
    save_index(ckpt, index)


def test_absolute_shard_path(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    absolute = str((ckpt / S1).resolve())
    _remap_shard(ckpt, S1, absolute)
    assert_error(
        inspect(capsys, ckpt),
        ckpt / INDEX_NAME,
        f"shard {absolute!r} is an absolute path",
    )


def test_dotdot_shard_path(capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(ckpt / S1, outside / S1)
    name = f"../elsewhere/{S1}"
    _remap_shard(ckpt, S1, name)
    assert_error(
        inspect(capsys, ckpt), ckpt / INDEX_NAME, f"shard {name!r} points outside the checkpoint"
    )


def test_symlinked_shard_outside(
    capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    target = tmp_path_factory.mktemp("outside") / S2
    shutil.move(ckpt / S2, target)
    (ckpt / S2).symlink_to(target)
    assert_error(
        inspect(capsys, ckpt),
        ckpt / INDEX_NAME,
        f"shard {S2!r} resolves outside the checkpoint directory",
    )


# ---------------------------------------------------------------------------------------------
# 3. Shard files cut short or with a bad header length


def test_truncated_shard(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    shard = ckpt / S1
    blob = shard.read_bytes()
    shard.write_bytes(blob[:-10])
    assert_error(
        inspect(capsys, ckpt),
        shard,
        f"tensor {DOWN_SCALE!r}: byte range ends at {len(blob)}",
        f"past the end of the file ({len(blob) - 10} bytes): truncated shard?",
    )


@pytest.mark.parametrize(
    ("length", "needle"),
    [
        pytest.param(None, "runs past the end of the file", id="past-end"),
        pytest.param(2**40, f"header length {2**40} is absurdly large", id="absurd"),
    ],
)
def test_bad_header_length(
    capsys: pytest.CaptureFixture[str], ckpt: Path, length: int | None, needle: str
) -> None:
    shard = ckpt / S2
    blob = shard.read_bytes()
    n = len(blob) if length is None else length
    shard.write_bytes(struct.pack("<Q", n) + blob[8:])
    line = assert_error(inspect(capsys, ckpt), shard, needle)
    assert f"header length {n}" in line


def test_shard_shorter_than_8_bytes(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    shard = ckpt / S3
    shard.write_bytes(b"\x10\x00\x00\x00")
    assert_error(
        inspect(capsys, ckpt), shard, "truncated shard: 4 bytes, shorter than the 8-byte header"
    )


# ---------------------------------------------------------------------------------------------
# 4. Byte ranges


def test_overlapping_byte_ranges(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    # Same size, so each entry is self-consistent; q_b's own bytes become a hole, but the layout
    # check walks ranges in order and meets the overlap (at q_a's range) before the hole.
    shard = ckpt / S1

    def overlap(h: dict[str, Any]) -> None:
        h[Q_B_SCALE]["data_offsets"] = list(h[Q_A_SCALE]["data_offsets"])

    edit_header(shard, overlap)
    assert_error(
        inspect(capsys, ckpt), shard, f"tensor {Q_B_SCALE!r}: byte range", "overlaps the previous"
    )


def test_byte_range_past_end_of_file(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    shard = ckpt / S1

    def push_out(h: dict[str, Any]) -> None:
        begin, end = h[DOWN_SCALE]["data_offsets"]
        h[DOWN_SCALE]["data_offsets"] = [begin + 4096, end + 4096]

    edit_header(shard, push_out)
    assert_error(
        inspect(capsys, ckpt),
        shard,
        f"tensor {DOWN_SCALE!r}: byte range ends at",
        "past the end of the file",
    )


# ---------------------------------------------------------------------------------------------
# 5. A tensor in two places


def test_index_lists_a_tensor_twice(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    index = load_index(ckpt)
    pairs = [*index["weight_map"].items(), (GATE, S2)]  # GATE already maps to S1
    body = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs)
    meta = json.dumps(index["metadata"])
    (ckpt / INDEX_NAME).write_text(f'{{"metadata": {meta}, "weight_map": {{{body}}}}}')
    assert_error(inspect(capsys, ckpt), ckpt / INDEX_NAME, f"tensor {GATE!r} is listed twice")


def test_tensor_stored_in_two_shards(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    header, data = read_shard(ckpt / S1)
    begin, end = header[KV_B_SCALE]["data_offsets"]
    rebuild_shard(ckpt / S2, add=((KV_B_SCALE, "F32", (2, 1), data[begin:end]),))
    assert_error(
        inspect(capsys, ckpt),
        ckpt / S2,
        f"tensor {KV_B_SCALE!r} is stored in both {S1} and {S2}",
    )


# ---------------------------------------------------------------------------------------------
# 6. Index and shard headers disagree


def test_index_lists_tensor_shard_lacks(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    rebuild_shard(ckpt / S1, drop=(DOWN_SCALE,))  # the index still maps it to S1
    assert_error(
        inspect(capsys, ckpt),
        ckpt / S1,
        f"tensor {DOWN_SCALE!r} is listed in the index but not in this shard",
    )


def test_shard_holds_tensor_index_lacks(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    index = load_index(ckpt)
    del index["weight_map"][GATE]
    save_index(ckpt, index)
    assert_error(
        inspect(capsys, ckpt),
        ckpt / S1,
        f"tensor {GATE!r} is in this shard but the index does not list it",
    )


# ---------------------------------------------------------------------------------------------
# 7, 8. Wrong dtype, wrong scale shape: findings


@pytest.mark.parametrize("dtype", ["I8", "U8"])
def test_wrong_dtype(capsys: pytest.CaptureFixture[str], ckpt: Path, dtype: str) -> None:
    def retype(h: dict[str, Any]) -> None:
        h[GATE]["dtype"] = dtype

    edit_header(ckpt / S1, retype)
    shape = "[512, 256]"
    assert_findings(
        inspect(capsys, ckpt),
        f"{S1}: tensor {GATE!r}: wrong tensor: expected F8_E4M3{shape}, found {dtype}{shape}",
    )


def test_wrong_scale_shape(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    def transpose(h: dict[str, Any]) -> None:
        h[KV_B_SCALE]["shape"] = [1, 2]

    edit_header(ckpt / S1, transpose)
    assert_findings(
        inspect(capsys, ckpt),
        f"{S1}: tensor {KV_B_SCALE!r}: wrong scale shape: expected F32[2, 1], found F32[1, 2]",
    )


# ---------------------------------------------------------------------------------------------
# 9. Bad scale values: only --deep reads them


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        pytest.param(math.nan, "NaN", id="nan"),
        pytest.param(math.inf, "Inf", id="inf"),
        pytest.param(-math.inf, "Inf", id="neg-inf"),
        pytest.param(0.0, "non-positive", id="zero"),
        pytest.param(-0.5, "non-positive", id="negative"),
    ],
)
def test_bad_scale_value(
    capsys: pytest.CaptureFixture[str], ckpt: Path, value: float, kind: str
) -> None:
    patch_f32(ckpt / S1, Q_B_SCALE, value, element=3)  # [1, 1] of a [2, 2] scale
    code, out, err = inspect(capsys, ckpt)
    assert (code, err) == (0, ""), out
    assert "findings     none" in out
    assert_findings(
        inspect(capsys, ckpt, "--deep"),
        f"{S1}: tensor {Q_B_SCALE!r}: 1 bad scale value(s) ({kind}), first at [1, 1]",
    )


# ---------------------------------------------------------------------------------------------
# 10. config.json


def _edit_config(ckpt: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    edit(cfg)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def test_config_missing_required_field(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    _edit_config(ckpt, lambda c: c.pop("hidden_size"))
    assert_error(inspect(capsys, ckpt), ckpt / "config.json", "field 'hidden_size' is missing")


def test_config_field_of_wrong_type(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    _edit_config(ckpt, lambda c: c.update(num_hidden_layers="61"))
    assert_error(
        inspect(capsys, ckpt),
        ckpt / "config.json",
        "field 'num_hidden_layers' must be int, got '61'",
    )


def test_config_not_json(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    (ckpt / "config.json").write_text('{"model_type": "kimi_k2",')
    assert_error(inspect(capsys, ckpt), ckpt / "config.json", "not valid JSON")


def test_config_missing(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    (ckpt / "config.json").unlink()
    assert_error(inspect(capsys, ckpt), ckpt / "config.json", "config.json not found")


# ---------------------------------------------------------------------------------------------
# 11. Inventory against the architecture: findings


def _resize_total(ckpt: Path, delta: int, edit: Callable[[dict[str, str]], None]) -> None:
    index = load_index(ckpt)
    edit(index["weight_map"])
    index["metadata"]["total_size"] += delta
    save_index(ckpt, index)


def test_missing_tensor(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    delta = rebuild_shard(ckpt / S1, drop=(POST_NORM,))
    assert delta == -512
    _resize_total(ckpt, delta, lambda wm: wm.pop(POST_NORM))
    assert_findings(
        inspect(capsys, ckpt),
        f"{INDEX_NAME}: tensor {POST_NORM!r} is missing (expected BF16[256])",
    )


def test_unexpected_extra_tensor(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    extra = f"{L0}.self_attn.q_a_proj.bias"
    delta = rebuild_shard(ckpt / S1, add=((extra, "F32", (192,), bytes(4 * 192)),))
    assert delta == 4 * 192
    _resize_total(ckpt, delta, lambda wm: wm.update({extra: S1}))
    assert_findings(
        inspect(capsys, ckpt),
        f"{S1}: tensor {extra!r} (F32[192]) is not part of the architecture",
    )


# ---------------------------------------------------------------------------------------------
# --debug


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    (ckpt / S2).unlink()
    code = main(["inspect", str(ckpt), "--debug"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert "Traceback (most recent call last)" in err
    assert "K2Error" in err
    last = err.rstrip().splitlines()[-1]
    assert last == f"error: {ckpt / INDEX_NAME}: shard {S2!r} is missing"


# ---------------------------------------------------------------------------------------------
# Hostile values that once ended in an "internal error" (or were silently accepted) instead of
# one line naming the file and the field.


def assert_named_error(result: tuple[int, str, str], file: Path, needle: str) -> None:
    """Rejected (exit 1 or 2) with `file` and `needle` named, never as an internal error."""
    code, out, err = result
    assert code in (1, 2), (code, out, err)
    assert "internal error" not in out + err
    assert "Traceback" not in out + err
    text = err if code == 2 else out
    assert str(file) in text or file.name in text, text
    assert needle in text, text


def test_index_is_a_directory(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    (ckpt / INDEX_NAME).unlink()
    (ckpt / INDEX_NAME).mkdir()
    assert_error(inspect(capsys, ckpt), ckpt / INDEX_NAME, "index")


def test_bool_in_shard_shape(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    def boolify(h: dict[str, Any]) -> None:
        h[KV_B_SCALE]["shape"] = [2, True]  # (2, True) == (2, 1): passes every check today

    edit_header(ckpt / S1, boolify)
    assert_error(
        inspect(capsys, ckpt, "--deep"),
        ckpt / S1,
        f"tensor {KV_B_SCALE!r}: shape must be a list of non-negative integers",
    )


def test_huge_shard_shape(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    def huge(h: dict[str, Any]) -> None:
        h[KV_B_SCALE]["shape"] = [2**70]

    edit_header(ckpt / S1, huge)
    assert_error(inspect(capsys, ckpt), ckpt / S1, f"tensor {KV_B_SCALE!r}")


def test_moe_layer_freq_zero(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    _edit_config(ckpt, lambda c: c.update(moe_layer_freq=0))
    assert_named_error(inspect(capsys, ckpt), ckpt / "config.json", "'moe_layer_freq'")


def test_eos_token_id_list_of_str(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    _edit_config(ckpt, lambda c: c.update(eos_token_id=[1, "a"]))
    assert_named_error(inspect(capsys, ckpt), ckpt / "config.json", "'eos_token_id'")


# ---------------------------------------------------------------------------------------------
# Issue 14: escaped exceptions, hangs, special files, wrong input accepted, uncapped lines.


@contextmanager
def deadline(seconds: int = 20) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the body blocks, e.g. in open() on a FIFO."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_header_dtype_that_is_a_list_or_object(capsys: pytest.CaptureFixture[str], ckpt: Path):
    for bad in (["F32"], {"x": 1}):

        def retype(h: dict[str, Any], bad: Any = bad) -> None:
            h[KV_B_SCALE]["dtype"] = bad

        edit_header(ckpt / S1, retype)
        assert_error(inspect(capsys, ckpt), ckpt / S1, f"tensor {KV_B_SCALE!r}: unknown dtype")


@pytest.mark.parametrize("bad", [[], "x", 1, {"k": 1}, {"k": None}])
def test_header_metadata_must_map_strings_to_strings(
    capsys: pytest.CaptureFixture[str], ckpt: Path, bad: Any
) -> None:
    edit_header(ckpt / S2, lambda h: h.update(__metadata__=bad))
    assert_error(inspect(capsys, ckpt), ckpt / S2, "__metadata__ must map strings to strings")


def test_header_metadata_null_is_accepted_as_safetensors_does(
    capsys: pytest.CaptureFixture[str], ckpt: Path
) -> None:
    edit_header(ckpt / S2, lambda h: h.update(__metadata__=None))
    code, _, err = inspect(capsys, ckpt)
    assert (code, err) == (0, "")


def test_deeply_nested_json_everywhere(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    index = load_index(ckpt)
    (ckpt / INDEX_NAME).write_text(
        json.dumps(index)[:-1] + f', "deep": {_nested(1000)}}}', encoding="utf-8"
    )
    assert_error(inspect(capsys, ckpt), ckpt / INDEX_NAME, "field 'deep' is nested deeper than")
    save_index(ckpt, index)
    edit_header(ckpt / S1, lambda h: h.update(__metadata__={"a": "b"}))
    raw = (ckpt / S1).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + n].rstrip(b" ")[:-1] + b', "x": ' + _nested(1000).encode() + b"}"
    header += b" " * (-len(header) % 8)
    (ckpt / S1).write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + n :])
    assert_error(inspect(capsys, ckpt), ckpt / S1, "field 'x' is nested deeper than 128 levels")


def test_deeply_nested_config_json(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    text = (ckpt / "config.json").read_text()
    for depth in (200, 5000):  # under and over the parser's own recursion limit
        (ckpt / "config.json").write_text(text.rstrip()[:-1] + f', "extra": {_nested(depth)}}}')
        assert_error(inspect(capsys, ckpt), ckpt / "config.json", "field 'extra' is nested")


def test_huge_integer_in_config(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    text = (ckpt / "config.json").read_text()
    cfg = json.loads(text)
    for digits in (400, 5000):
        (ckpt / "config.json").write_text(
            text.replace(f'"hidden_size": {cfg["hidden_size"]}', f'"hidden_size": 1{"0" * digits}')
        )
        line = assert_error(inspect(capsys, ckpt), ckpt / "config.json")
        assert len(line) < 300
        assert "hidden_size" in line or "4300 digits" in line, line


@pytest.mark.parametrize(
    "field", ["num_hidden_layers", "n_routed_experts", "num_nextn_predict_layers"]
)
def test_billion_layers_or_experts_refused_fast(
    capsys: pytest.CaptureFixture[str], ckpt: Path, field: str
) -> None:
    _edit_config(ckpt, lambda c: c.update({field: 10**9}))
    with deadline(20):
        line = assert_error(inspect(capsys, ckpt), ckpt / "config.json", f"field {field!r}")
        assert "must be at most" in line
        code, _, err = run(capsys, "plan", str(ckpt / "config.json"), "--gpus", "H200x8")
    assert code == 2 and f"field {field!r} must be at most" in err, err


@pytest.mark.parametrize("value", ["0", "NaN", "Infinity", "-Infinity", "-1.5"])
def test_rope_theta_must_be_positive_and_finite(
    capsys: pytest.CaptureFixture[str], ckpt: Path, value: str
) -> None:
    text = (ckpt / "config.json").read_text()
    theta = json.loads(text)["rope_theta"]
    (ckpt / "config.json").write_text(
        text.replace(f'"rope_theta": {json.dumps(theta)}', f'"rope_theta": {value}')
    )
    assert_error(inspect(capsys, ckpt), ckpt / "config.json", "field 'rope_theta' must be")


def test_llama_config_is_named_unsupported(capsys: pytest.CaptureFixture[str], ckpt: Path):
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096}
    (ckpt / "config.json").write_text(json.dumps(llama))
    line = assert_error(inspect(capsys, ckpt), ckpt / "config.json", "field 'model_type'")
    assert "'llama' is not a supported architecture" in line
    assert "moe_intermediate_size" not in line


@pytest.mark.parametrize("name", ["config.json", INDEX_NAME])
def test_fifo_in_place_of_a_json_file(
    capsys: pytest.CaptureFixture[str], ckpt: Path, name: str
) -> None:
    (ckpt / name).unlink()
    os.mkfifo(ckpt / name)
    with deadline(20):
        assert_error(inspect(capsys, ckpt), ckpt / name, "is a FIFO, not a regular file")


def test_fifo_or_dev_zero_as_a_shard(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    (ckpt / S2).unlink()
    os.mkfifo(ckpt / S2)
    with deadline(20):
        assert_error(inspect(capsys, ckpt), ckpt / INDEX_NAME, f"shard {S2!r} is not a regular")


def test_dev_zero_symlink_in_place_of_config(capsys: pytest.CaptureFixture[str], ckpt: Path):
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").symlink_to("/dev/zero")
    with deadline(20):
        line = assert_error(inspect(capsys, ckpt), ckpt / "config.json")
    assert "outside the checkpoint" in line or "character device" in line
    # Given alone (no checkpoint around it), it is still not a regular file.
    with deadline(20):
        assert_error(
            inspect(capsys, ckpt / "config.json"), ckpt / "config.json", "character device"
        )


@pytest.mark.parametrize("name", ["config.json", INDEX_NAME])
def test_symlink_outside_refused_for_every_file(
    capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path, name: str
) -> None:
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(ckpt / name, outside)
    (ckpt / name).symlink_to(outside)
    assert_error(inspect(capsys, ckpt), ckpt / name, "resolves outside the checkpoint directory")


def test_shard_symlink_loop(capsys: pytest.CaptureFixture[str], ckpt: Path) -> None:
    (ckpt / S2).unlink()
    (ckpt / S2).symlink_to(S2)
    assert_error(
        inspect(capsys, ckpt), ckpt / INDEX_NAME, f"shard {S2!r} cannot be opened", "symbolic"
    )


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        pytest.param("m" * 300 + ".safetensors", "the filesystem allows", id="long"),
        pytest.param("model\x00.safetensors", "contains a NUL byte", id="nul"),
        pytest.param(S1 + "/", "ends in a path separator", id="trailing-slash"),
    ],
)
def test_bad_shard_names(
    capsys: pytest.CaptureFixture[str], ckpt: Path, name: str, needle: str
) -> None:
    _remap_shard(ckpt, S1, name)
    line = assert_error(inspect(capsys, ckpt), ckpt / INDEX_NAME, needle)
    assert len(line) < 1200


def test_index_metadata_must_be_an_object(capsys: pytest.CaptureFixture[str], ckpt: Path):
    for bad in ([], "x", 0, None):
        index = load_index(ckpt)
        index["metadata"] = bad
        save_index(ckpt, index)
        assert_error(inspect(capsys, ckpt), ckpt / INDEX_NAME, "index 'metadata' must be an object")


def test_stray_single_file_beside_the_index(capsys: pytest.CaptureFixture[str], ckpt: Path):
    shutil.copy(ckpt / S1, ckpt / "model.safetensors")
    assert_error(
        inspect(capsys, ckpt), ckpt / "model.safetensors", "transformers would load it instead"
    )


def test_megabyte_tensor_name_makes_a_short_line(capsys: pytest.CaptureFixture[str], ckpt: Path):
    huge = "x" * (1 << 20)
    index = load_index(ckpt)
    index["weight_map"][huge] = S1
    save_index(ckpt, index)
    line = assert_error(inspect(capsys, ckpt), ckpt / S1, "is listed in the index but not in")
    assert len(line) <= 1200
    assert "cut]" in line


def test_synth_to_an_unwritable_path(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = run(capsys, "synth", str(blocker / "ckpt"))
    assert code == 2 and out == "", err
    assert err.startswith(f"error: {blocker / 'ckpt'}: cannot create output directory: "), err
    assert "internal error" not in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        code, _, err = run(capsys, "synth", str(locked / "ckpt"))
        assert code == 2 and "cannot create output directory: Permission denied" in err, err


def test_json_errors_come_out_as_an_object(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    missing = tmp_path / "nope"
    for argv in (("--json", "inspect", str(missing)), ("inspect", str(missing), "--json")):
        code, out, err = run(capsys, *argv)
        assert code == 2
        assert json.loads(out) == {
            "error": f"{missing}: not a checkpoint directory",
            "exit_code": 2,
        }
        assert err == f"error: {missing}: not a checkpoint directory\n"
    code, out, _ = run(capsys, "--json", "no-such-command")
    assert code == 2 and json.loads(out)["exit_code"] == 2
    code, out, _ = run(capsys, "inspect", str(missing))
    assert code == 2 and out == ""  # without --json, stdout stays empty


def test_generation_config_read_safely_by_convert(
    capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path
) -> None:
    gen = ckpt / "generation_config.json"
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    cases: list[tuple[Callable[[], None], str]] = [
        (lambda: os.mkfifo(gen), "is a FIFO, not a regular file"),
        (lambda: gen.write_text(f'{{"x": {_nested(3000)}}}'), "field 'x' is nested deeper"),
        (lambda: gen.symlink_to(outside), "resolves outside the checkpoint directory"),
    ]
    for make, needle in cases:
        gen.unlink()
        make()
        with deadline(60):
            code, out, err = run(capsys, "convert", str(ckpt), str(tmp_path / "out"))
        assert code == 2 and out == "", err
        assert err.startswith(f"error: {gen}: ") and needle in err, err


def test_hash_refuses_a_file_symlinked_from_outside(
    capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "big.bin"
    outside.write_bytes(b"x" * 100)
    (ckpt / "README.md").symlink_to(outside)
    assert_error(
        inspect(capsys, ckpt, "--hash"), ckpt / "README.md", "resolves outside the checkpoint"
    )


@pytest.mark.parametrize("name", ["tiktoken.model", "tokenizer_config.json"])
def test_fifo_or_dev_zero_in_place_of_a_tokenizer_file(ckpt: Path, name: str) -> None:
    from k2trt.chat.template import load_chat_template
    from k2trt.chat.tokenizer import KimiTokenizer
    from k2trt.errors import K2Error

    (ckpt / name).unlink()
    os.mkfifo(ckpt / name)
    with deadline(20), pytest.raises(K2Error, match="is a FIFO, not a regular file") as fifo:
        KimiTokenizer.from_dir(ckpt)
    assert str(ckpt / name) in str(fifo.value)
    (ckpt / name).unlink()
    (ckpt / name).symlink_to("/dev/zero")
    with deadline(20), pytest.raises(K2Error, match="character device"):
        KimiTokenizer.from_dir(ckpt)
    if name == "tokenizer_config.json":  # where the template is read from, too
        with deadline(20), pytest.raises(K2Error, match="character device"):
            load_chat_template(ckpt)
