"""`k2trt release verify` and signing: hashes, signature, weights, compatibility; notes."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from cli_run import run
from k2trt.release import verify as verify_mod
from k2trt.release.sign import describe, keygen
from k2trt.release.verify import verify_release
from release_fixtures import build, make_project, write_spec


@pytest.fixture(scope="module")
def signed(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(project root, release dir, public key): a signed release of the tiny model."""
    root = tmp_path_factory.mktemp("signed")
    private, public = keygen(root / "keys")
    spec = make_project(root, tiny_ckpt)
    release = build(spec, root / "out", sign_key=private).path
    return root, Path(release), public


@pytest.fixture
def copy(signed: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    """A copy of the signed release (elsewhere: a release verifies wherever it is)."""
    dest = tmp_path / "copy" / "1.0.0"
    shutil.copytree(signed[1], dest)
    return dest


def test_keygen_writes_a_private_and_a_public_key(tmp_path: Path) -> None:
    private, public = keygen(tmp_path)
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(Exception, match="key already exists"):
        keygen(tmp_path)


def test_a_signed_release_verifies_where_it_is_copied(
    signed: tuple[Path, Path, Path], copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "release", "verify", str(copy), "--public-key", str(signed[2]))
    assert code == 0
    assert out.splitlines()[0].endswith("): ok")
    assert "  checked        signature" in out
    assert "  compatibility  not checked" in out


def test_a_tampered_file_is_named_by_hash_and_by_signature(
    signed: tuple[Path, Path, Path], copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = copy / "triton/model_repository/tensorrt_llm/1/model.yaml"
    target.write_text(target.read_text().replace("max_batch_size: 8", "max_batch_size: 9"))
    code, out, _ = run(capsys, "release", "verify", str(copy), "--public-key", str(signed[2]))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].endswith("): 2 finding(s)")
    assert lines[-2].startswith(f"  {target}: sha256 ") and "expected" in lines[-2]
    assert lines[-1] == (
        f"  {copy / 'release.sig'}: triton/model_repository/tensorrt_llm/1/model.yaml changed "
        "since it was signed"
    )


def test_added_and_removed_files_and_an_edited_manifest(
    signed: tuple[Path, Path, Path], copy: Path
) -> None:
    (copy / "extra.txt").write_text("x")
    (copy / "RELEASE_NOTES.md").unlink()
    manifest = json.loads((copy / "release.json").read_text())
    manifest["versions"]["tensorrt_llm"] = "9.9.9"
    (copy / "release.json").write_text(json.dumps(manifest))
    result = verify_release(copy, public_key=signed[2])
    assert not result.ok
    text = "\n".join(result.findings)
    assert f"{copy / 'release.json'}: id sha256:" in text and "the manifest was edited" in text
    assert f"{copy / 'RELEASE_NOTES.md'}: missing (listed in release.json)" in text
    assert f"{copy / 'extra.txt'}: not part of the release (not in release.json)" in text
    assert "RELEASE_NOTES.md missing since signing" in text
    assert "extra.txt added since signing" in text
    assert "release.json changed since it was signed" in text


def test_another_key_or_no_key(signed: tuple[Path, Path, Path], copy: Path, tmp_path: Path) -> None:
    _, other = keygen(tmp_path / "other")
    findings = verify_release(copy, public_key=other).findings
    assert len(findings) == 1
    assert findings[0].startswith(
        f"{copy / 'release.sig'}: signature does not verify: Key mismatch"
    )
    unchecked = verify_release(copy)
    assert unchecked.ok and "signature present, not checked (no --public-key)" in unchecked.checked
    (copy / "release.sig").unlink()
    assert verify_release(copy, public_key=signed[2]).findings == [
        f"{copy / 'release.sig'}: no signature (build the release with --sign-key)"
    ]


def test_weights_are_checked_against_the_release(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    root, release, _ = signed
    prepared = root / "out/.work/kimi-k2-tiny/1.0.0/prepared"
    assert verify_release(release, weights=prepared).ok
    weights = tmp_path / "weights"
    shutil.copytree(prepared, weights)
    shard = weights / "model-2-of-3.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    (weights / "tokenizer/tokenizer.json").unlink()
    findings = verify_release(release, weights=weights).findings
    assert findings[0].startswith(f"{shard}: sha256 ")
    assert findings[1] == f"{weights / 'tokenizer/tokenizer.json'}: missing from the weights"


def test_compatibility_from_flags(
    signed: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    release = signed[1]
    ok = verify_release(release, gpus="H100x8", trtllm_version="1.1.0")
    assert ok.ok and ok.compatibility == "compatible"
    bad = verify_release(release, gpus="H200x8", trtllm_version="1.0.0")
    assert bad.compatibility == "incompatible"
    assert bad.findings == [
        "gpus: expected H100 x 1 in all, found H200 x 8",
        "tensorrt_llm: expected 1.1.0 (as in nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3), "
        "found 1.0.0",
    ]
    code, _, err = run(capsys, "--json", "release", "verify", str(release), "--gpus", "B200x8")
    assert code == 1 and err == "error: gpus: expected H100 x 1 in all, found B200 x 8\n"


def test_nvidia_smi_is_read_per_node(
    signed: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"  # prints what the real one does for --query-gpu=name
    smi.write_text("#!/bin/sh\nfor i in 1 2; do echo 'NVIDIA H100 80GB HBM3'; done\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert verify_mod.detect_gpus() == ("H100", 2)
    result = verify_release(signed[1], gpus="H200x16")  # nvidia-smi wins over the flag
    assert result.ok and "gpus (nvidia-smi: H100 x 2)" in result.checked
    smi.write_text("#!/bin/sh\necho 'NVIDIA H20'\n")
    assert verify_mod.detect_gpus() == ("H20", 1)


def test_per_node_and_whole_cluster_counts() -> None:
    target = {"gpu": "H200", "gpus": 16, "gpus_per_node": 8, "world_size": 16}
    assert verify_mod.check_gpus(target, ("H200", 8), per_node=True) == []
    assert verify_mod.check_gpus(target, ("H200", 8), per_node=False) == [
        "gpus: expected H200 x 16 in all, found H200 x 8 (too few)"
    ]
    assert verify_mod.check_gpus(target, ("H200", 4), per_node=True) == [
        "gpus: expected H200 x 8 per node, found H200 x 4 (too few)"
    ]


def test_unreadable_release_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "release", "verify", str(tmp_path))
    assert code == 2 and err == f"error: {tmp_path / 'release.json'}: release manifest not found\n"
    (tmp_path / "release.json").write_text('{"format": "other"}')
    code, _, err = run(capsys, "release", "verify", str(tmp_path))
    assert code == 2 and "not a k2trt release (expected format k2trt.release/1)" in err


def test_model_signing_messages_become_lines() -> None:
    message = (
        "Signature mismatch: [\"Extra files found in model 'r': a.txt, b/c.txt\", "
        "\"Missing files in model 'r': d.txt\", \"Hash mismatch for 'e.json': Expected 'x'\"]"
    )
    assert describe(message) == [
        "e.json changed since it was signed",
        "a.txt added since signing",
        "b/c.txt added since signing",
        "d.txt missing since signing",
    ]


def test_notes_against_the_previous_release(signed: tuple[Path, Path, Path]) -> None:
    root = signed[0]
    spec = write_spec(
        root, "release-1.1.yaml", version="1.1.0", previous="1.0.0",
        build={"gpus": "H100x1", "context": 4096, "max_batch_size": 16},
    )  # fmt: skip
    release = build(spec, root / "out")
    notes = (release.path / "RELEASE_NOTES.md").read_text()
    first = json.loads((signed[1] / "release.json").read_text())
    assert notes.splitlines()[:3] == [
        "# kimi-k2-tiny 1.1.0",
        "",
        f"Compared with kimi-k2-tiny 1.0.0 ({first['id']}).",
    ]
    assert "- option `max_batch_size`: 8 -> 16" in notes
    assert "- option `cuda_graph_config.batch_sizes`: [1, 2, 4, 8] -> [1, 2, 4, 8, 16]" in notes
    assert "## Serving\n\n- unchanged\n" in notes
    assert "checkpoint:" not in notes  # same weights
    assert release.manifest["previous"] == {"version": "1.0.0", "id": first["id"]}
    assert release.manifest["engine"]["id"] != first["engine"]["id"]
