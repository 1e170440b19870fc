"""`convert` / `slice` weights pipeline: exact bytes, dequantization, slicing, resume, faults."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from k2trt.checkpoint.fp8 import dequantize_blocks
from k2trt.checkpoint.inspection import InspectOptions, inspect_checkpoint
from k2trt.checkpoint.manifest import MANIFEST_NAME
from k2trt.checkpoint.reader import INDEX_NAME, Checkpoint
from k2trt.checkpoint.safetensors import ShardWriter
from k2trt.convert import pipeline, shards
from k2trt.convert.partial import PROGRESS_NAME
from k2trt.convert.pipeline import ConvertOptions, ConvertResult, convert_checkpoint
from k2trt.convert.weights import slice_overrides
from k2trt.errors import K2Error
from k2trt.models.config import ModelConfig
from k2trt.output import Ticker

SECOND = "model-2-of-3.safetensors"


@pytest.fixture
def src(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny checkpoint (tests may damage it)."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "src"))


def convert(src: Path, out: Path, **opts: Any) -> ConvertResult:
    return convert_checkpoint(src, out, ConvertOptions(**opts))


def raw_tensors(root: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    with Checkpoint.open(root, require_weights=True) as ckpt:
        return {t.name: (t.dtype, t.shape, t.raw().tobytes()) for t in ckpt}


def torch_tensors(root: Path) -> dict[str, torch.Tensor]:
    with Checkpoint.open(root, require_weights=True) as ckpt:
        return {t.name: t.torch() for t in ckpt}


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (dotfiles included) with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_clean(out: Path) -> None:
    report = inspect_checkpoint(out)
    assert report.findings == [], report.findings
    assert not out.with_name(f".{out.name}.partial").exists()
    assert not (out / PROGRESS_NAME).exists()


def fail_on(monkeypatch: pytest.MonkeyPatch, shard: str, exc: BaseException, at: int = 0) -> None:
    """Make the `at`-th tensor write into `shard` raise `exc` (a fault mid-shard)."""
    original = ShardWriter.write_parts
    calls: dict[str, int] = {}

    def faulty(self: ShardWriter, name: str, parts: Any) -> None:
        n = calls[self.path.name] = calls.get(self.path.name, -1) + 1
        if self.path.name == shard and n == at:
            raise exc
        original(self, name, parts)

    monkeypatch.setattr(ShardWriter, "write_parts", faulty)


# ---------------------------------------------------------------------------------------------
# fp8: the weights as shipped


def test_drop_extra_rewrites_shards_without_inv_freq(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = convert(src, out, kv_cache_fp8=True, drop_extra=True)
    assert_clean(out)
    assert (out / "hf_quant_config.json").is_file()  # metadata got the flag
    assert "without --drop-extra they would be hard-linked" in result.notes[0]
    before, after = raw_tensors(src), raw_tensors(out)
    dropped = {n for n in before if n.endswith("rotary_emb.inv_freq")}
    assert dropped and set(after) == set(before) - dropped
    assert all(after[n] == before[n] for n in after)
    assert (result.written, result.linked, result.dropped) == (3, 0, len(dropped))
    assert result.tensors == len(after) and result.bytes == sum(len(v[2]) for v in after.values())
    assert not list(out.glob("*.py"))  # remote code never travels


def test_default_hard_links_unchanged_shards_and_keeps_inv_freq(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = convert(src, out)
    assert_clean(out)
    assert (result.linked, result.written, result.dropped) == (3, 0, 0)
    assert not result.notes
    assert [n for n in raw_tensors(out) if n.endswith("rotary_emb.inv_freq")]
    for shard in src.glob("*.safetensors"):
        assert (out / shard.name).stat().st_ino == shard.stat().st_ino
    assert raw_tensors(out) == raw_tensors(src)


def test_mode_copy_and_link_fallback_across_filesystems(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied = convert(src, tmp_path / "copy", mode="copy")
    assert (copied.copied, copied.linked) == (3, 0)
    shard = tmp_path / "copy" / SECOND
    assert shard.stat().st_ino != (src / SECOND).stat().st_ino
    assert shard.read_bytes() == (src / SECOND).read_bytes()

    def no_link(*_: Any, **__: Any) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(shards.os, "link", no_link)
    auto = convert(src, tmp_path / "auto")
    assert (auto.copied, auto.linked) == (3, 0)
    with pytest.raises(K2Error, match=r"cannot hard-link.*--mode copy") as err:
        convert(src, tmp_path / "link", mode="link")
    assert "\n" not in str(err.value)


def test_manifest_is_written_last_and_hashes_every_file(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, bytes] = {}
    original = pipeline.write_manifest

    def spy(path: Path, *args: Any, **kwargs: Any) -> None:
        seen.update(tree(path.parent))  # everything that exists when the manifest is written
        original(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "write_manifest", spy)
    out = tmp_path / "out"
    result = convert(src, out)
    final = tree(out)
    manifest = json.loads(final.pop(MANIFEST_NAME))
    assert final == {k: v for k, v in seen.items() if not k.startswith(".")}
    assert manifest["files"] == {
        name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in final.items()
    }
    sources = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    assert manifest["source"]["files"] == {
        n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in sources.items()
    }
    assert manifest["config_changes"] == result.config_changes
    assert manifest["options"]["drop_extra"] is False and "workers" not in manifest["options"]
    assert {"name", "sha256"} <= set(manifest["chat_template"])


def test_source_manifest_is_reused_and_checked(src: Path, tmp_path: Path) -> None:
    inspect_checkpoint(src, InspectOptions(hash=True))
    convert(src, tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    theirs = json.loads((src / MANIFEST_NAME).read_text())["files"]
    assert all("mtime_ns" in entry for entry in theirs.values())  # inspect --hash pins them
    assert manifest["source"]["files"] == {
        n: {"bytes": e["bytes"], "sha256": e["sha256"]} for n, e in theirs.items()
    }
    # A hash taken on the way that disagrees with the source's manifest is refused.
    (src / MANIFEST_NAME).write_text(
        json.dumps(
            {
                "format": "k2trt.manifest/1",
                "files": {SECOND: {"bytes": (src / SECOND).stat().st_size, "sha256": "0" * 64}},
            }
        )
    )
    with pytest.raises(K2Error, match=f"{SECOND}: sha256 .* differs from the source manifest"):
        convert(src, tmp_path / "b")


def _pin_wrong_hash(src: Path) -> str:
    """inspect --hash, then a manifest whose SECOND entry lies (size and mtime still match)."""
    inspect_checkpoint(src, InspectOptions(hash=True))
    data = json.loads((src / MANIFEST_NAME).read_text())
    data["files"][SECOND]["sha256"] = "1" * 64
    (src / MANIFEST_NAME).write_text(json.dumps(data))
    return "1" * 64


@pytest.mark.parametrize("mode", ["auto", "copy"])
def test_manifest_digest_reused_only_while_size_and_mtime_match(
    src: Path, tmp_path: Path, mode: str
) -> None:
    lie = _pin_wrong_hash(src)
    # Size and mtime match: the recorded hash is taken as it is (the shard is not read for it).
    convert(src, tmp_path / "a", mode=mode)
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    assert manifest["files"][SECOND]["sha256"] == lie
    assert manifest["source"]["files"][SECOND]["sha256"] == lie
    # The mtime moved: the shard is hashed again, and the lie is found.
    st = (src / SECOND).stat()
    os.utime(src / SECOND, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(K2Error, match=f"{SECOND}: sha256 .* differs from the source manifest"):
        convert(src, tmp_path / "b", mode=mode)
    # A fresh manifest with the new mtime is trusted again.
    inspect_checkpoint(src, InspectOptions(hash=True))
    convert(src, tmp_path / "c", mode=mode)
    real = hashlib.sha256((src / SECOND).read_bytes()).hexdigest()
    manifest = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())
    assert manifest["files"][SECOND]["sha256"] == real


def test_trusted_copy_is_done_by_the_kernel(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inspect_checkpoint(src, InspectOptions(hash=True))

    def no_user_copy(*_: Any) -> None:
        raise AssertionError("copied through user space")

    monkeypatch.setattr(shards, "_user_copy", no_user_copy)
    result = convert(src, tmp_path / "out", mode="copy")
    assert result.copied == 3
    for shard in src.glob("*.safetensors"):
        assert (tmp_path / "out" / shard.name).read_bytes() == shard.read_bytes()


@pytest.mark.parametrize(
    "opts",
    [{}, {"mode": "copy"}, {"drop_extra": True}, {"dtype": "bf16"}, {"layers": 2, "experts": 3}],
)
def test_every_hash_is_taken_on_the_way_and_matches_hashlib(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opts: dict[str, Any]
) -> None:
    read_back: list[str] = []
    original = pipeline.hash_files

    def spy(paths: list[Path], *args: Any) -> Any:
        read_back.extend(p.name for p in paths)
        return original(paths, *args)

    monkeypatch.setattr(pipeline, "hash_files", spy)
    monkeypatch.setattr("k2trt.convert.weights.STREAM_CHUNK", 4096)  # many pieces per tensor
    out = tmp_path / "out"
    convert(src, out, **opts)
    assert not [n for n in read_back if n.endswith(".safetensors")]  # nor source nor output
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest(), name
    for name, entry in manifest["source"]["files"].items():
        assert entry["sha256"] == hashlib.sha256((src / name).read_bytes()).hexdigest(), name


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync is called on, in order (the calls still go through)."""
    paths: list[str] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    return paths


def test_output_is_synced_once_before_it_is_published(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsynced: list[str]
) -> None:
    synced: list[bool] = []
    real_sync = pipeline.sync_tree

    def spy_sync(root: Path) -> None:
        synced.append((root / MANIFEST_NAME).is_file() and not (tmp_path / "out").exists())
        real_sync(root)

    monkeypatch.setattr(pipeline, "sync_tree", spy_sync)
    convert(src, tmp_path / "out", drop_extra=True)
    assert synced == [True]  # once, after the manifest, before the rename
    assert not [p for p in fsynced if p.endswith(".safetensors")]  # no fsync per shard
    assert str(tmp_path) in fsynced  # the rename into place is made durable too


def test_sync_falls_back_to_fsync_per_file(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsynced: list[str]
) -> None:
    monkeypatch.setattr("k2trt.convert.partial._syncfs", lambda root: False)
    convert(src, tmp_path / "out", drop_extra=True)
    shard_syncs = {Path(p).name for p in fsynced if p.endswith(".safetensors")}
    assert shard_syncs == {p.name for p in src.glob("*.safetensors")}


def test_progress_reports_every_byte(src: Path, tmp_path: Path) -> None:
    totals: list[int] = []
    advanced: list[int] = []
    ticker = Ticker(advance=advanced.append, total=totals.append)
    convert_checkpoint(src, tmp_path / "out", ConvertOptions(), ticker)
    assert len(totals) == 1 and totals[0] == sum(advanced) > 0


# ---------------------------------------------------------------------------------------------
# bf16 and slicing


def test_bf16_equals_dequantize_blocks_exactly(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert(src, out, dtype="bf16")
    assert_clean(out)
    source, result = torch_tensors(src), torch_tensors(out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert not [n for n in result if n.endswith("_scale_inv")]
    fp8 = [n for n, t in source.items() if t.dtype == torch.float8_e4m3fn]
    assert fp8
    for name in fp8:
        expected = dequantize_blocks(
            source[name], source[name + "_scale_inv"], (128, 128), dtype=torch.bfloat16
        )
        assert result[name].dtype == torch.bfloat16
        assert torch.equal(result[name].view(torch.int16), expected.view(torch.int16)), name
    for name, tensor in result.items():
        if name not in fp8:
            assert torch.equal(tensor.view(torch.uint8), source[name].view(torch.uint8)), name


@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_slice_layers_and_experts(src: Path, tmp_path: Path, dtype: str) -> None:
    out = tmp_path / "out"
    result = convert(src, out, dtype=dtype, layers=2, experts=3)
    assert_clean(out)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["n_routed_experts"]) == (2, 3)
    assert config["num_experts_per_tok"] == 2  # the tiny source's top-2 still fits
    assert {c["field"] for c in result.config_changes} >= {"num_hidden_layers", "n_routed_experts"}
    source, sliced = torch_tensors(src), torch_tensors(out)
    assert not [n for n in sliced if n.startswith("model.layers.2.") or ".experts.3." in n]
    for name in (
        "model.layers.1.mlp.gate.weight",
        "model.layers.1.mlp.gate.e_score_correction_bias",
    ):
        assert torch.equal(sliced[name].view(torch.uint8), source[name][:3].view(torch.uint8))
    assert "model.layers.0.mlp.gate_proj.weight" in sliced  # layer 0 stays dense
    assert torch.equal(sliced["lm_head.weight"], source["lm_head.weight"])


def test_slice_config_clips_top_k_and_groups(tiny_ckpt: Path) -> None:
    raw = json.loads((tiny_ckpt / "config.json").read_text())
    cfg = ModelConfig.from_dict({**raw, "n_group": 4, "topk_group": 2})
    assert slice_overrides(cfg, None, 1) == {
        "n_routed_experts": (1, "slice: experts 0..0 of 8"),
        "num_experts_per_tok": (1, "slice: top-k cannot exceed the 1 experts"),
        "n_group": (1, "slice: grouped routing (4 groups) does not fit 1 experts"),
        "topk_group": (1, "slice: grouped routing (4 groups) does not fit 1 experts"),
    }
    assert "n_group" not in slice_overrides(ModelConfig.from_dict(raw), 2, 3)
    assert slice_overrides(cfg, 3, 8) == {}  # nothing cut, nothing changed


# ---------------------------------------------------------------------------------------------
# resharding


def test_reshard_repacks_into_more_shards(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    size = 300_000
    result = convert(src, out, shard_size=size)
    assert_clean(out)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    count = len(shards)
    assert count > 3 and result.written == count
    assert shards == [f"model-{i:05d}-of-{count:06d}.safetensors" for i in range(1, count + 1)]
    with Checkpoint.open(out) as ckpt:
        per_shard: dict[str, list[int]] = {}
        for info in ckpt.infos.values():
            per_shard.setdefault(info.shard.name, []).append(info.nbytes)
    assert all(sum(sizes) <= size or len(sizes) == 1 for sizes in per_shard.values())
    assert any(sum(sizes) > size for sizes in per_shard.values())  # the embedding, alone
    default = tmp_path / "default"
    convert(src, default, mode="reshard")  # default size (5 GB): one shard
    assert [p.name for p in default.glob("*.safetensors")] == ["model-00001-of-000001.safetensors"]
    assert raw_tensors(out) == raw_tensors(default)


# ---------------------------------------------------------------------------------------------
# Atomic and resumable


def test_resume_after_a_kill_skips_finished_shards(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        fail_on(m, SECOND, KeyboardInterrupt(), at=5)
        with pytest.raises(KeyboardInterrupt):
            convert(src, out, workers=1, drop_extra=True)
    partial = tmp_path / ".out.partial"
    assert not out.exists() and not (partial / MANIFEST_NAME).exists()
    assert list(json.loads((partial / PROGRESS_NAME).read_text())["shards"]) == [
        "model-1-of-3.safetensors"
    ]
    resumed = convert(src, out, workers=1, drop_extra=True)
    assert (resumed.skipped, resumed.written) == (1, 2)
    assert resumed.notes and resumed.notes[0].startswith("resuming")
    clean = tmp_path / "clean" / "out"  # same name: the manifest must match byte for byte
    convert(src, clean, drop_extra=True)
    assert tree(out) == tree(clean)


def test_changed_options_start_over(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        fail_on(m, SECOND, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            convert(src, out, workers=1, drop_extra=True)
    result = convert(src, out, dtype="bf16")
    assert result.skipped == 0 and result.written == 3
    assert "starting over" in result.notes[0] and "options" in result.notes[0]
    assert_clean(out)


def test_disk_full_mid_shard_is_one_clean_line(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    fail_on(monkeypatch, SECOND, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), at=3)
    with pytest.raises(K2Error) as err:
        convert(src, out, drop_extra=True)
    message = str(err.value)
    assert SECOND in message and "No space left on device" in message and "\n" not in message
    assert not out.exists()
    partial = tmp_path / ".out.partial"
    assert not list(partial.rglob(MANIFEST_NAME))
    assert not list(partial.glob(f".{SECOND}*"))  # the half-written shard is gone


def test_existing_output_needs_force(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(K2Error, match="already exists"):
        convert(src, out)
    convert(src, out, force=True)
    assert not (out / "old.txt").exists()
    assert_clean(out)


@pytest.mark.parametrize(
    "where", [lambda s: s, lambda s: s / "out", lambda s: s.parent], ids=["same", "in", "around"]
)
def test_output_overlapping_source_is_refused(src: Path, where: Callable[[Path], Path]) -> None:
    with pytest.raises(K2Error, match="source checkpoint"):
        convert(src, where(src), force=True)


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"mode": "link", "dtype": "bf16"}, "--mode link keeps shards unchanged"),
        ({"mode": "link", "layers": 2}, "--mode link keeps shards unchanged"),
        ({"mode": "copy", "shard_size": 10**6}, "contradicts --mode copy"),
        ({"experts": 9}, "--experts 9: source has 8"),
        ({"layers": 4}, "--layers 4: source has 3"),
        ({"workers": 0}, "--workers must be at least 1"),
        ({"dtype": "fp16"}, "--dtype must be one of"),
    ],
)
def test_conflicting_options_are_refused(
    src: Path, tmp_path: Path, opts: dict[str, Any], match: str
) -> None:
    with pytest.raises(K2Error, match=match):
        convert(src, tmp_path / "out", **opts)
    assert not (tmp_path / ".out.partial").exists()


# ---------------------------------------------------------------------------------------------
# Bad sources


def test_source_with_findings_is_refused_before_writing(src: Path, tmp_path: Path) -> None:
    index = json.loads((src / INDEX_NAME).read_text())
    index["metadata"]["total_size"] += 1
    (src / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(K2Error, match=f"{INDEX_NAME}: field 'metadata.total_size'"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / ".out.partial").exists()


def _poison_scale(src: Path) -> str:
    with Checkpoint.open(src) as ckpt:
        info = ckpt.infos["model.layers.1.self_attn.o_proj.weight_scale_inv"]
    with open(info.shard, "r+b") as fh:
        fh.seek(info.start + 4)
        fh.write(struct.pack("<f", float("nan")))
    return info.name


@pytest.mark.parametrize("opts", [{}, {"drop_extra": True}, {"dtype": "bf16"}])
def test_bad_scale_found_while_converting(src: Path, tmp_path: Path, opts: dict[str, Any]) -> None:
    name = _poison_scale(src)
    with pytest.raises(
        K2Error, match=rf"{name}.*1 bad scale value\(s\).*\(NaN\), first at \[1, 0\]"
    ):
        convert(src, tmp_path / "out", **opts)
    assert not (tmp_path / "out").exists()
