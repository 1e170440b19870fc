"""`k2trt convert|slice|verify` from the command line: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_run import run


def test_convert_then_verify_pair(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bf16"
    code, text, _ = run(capsys, "convert", str(tiny_ckpt), str(out), "--dtype", "bf16")
    assert code == 0
    assert text.startswith(f"wrote {out}: 94 tensors")  # the 3 layers' inv_freq kept
    assert "config quantization_config: removed (weights are written as bfloat16" in text
    code, text, _ = run(capsys, "--json", "verify", str(tiny_ckpt), str(out))
    report = json.loads(text)
    assert code == 0 and report["ok"] is True and report["mode"] == "pair"
    assert report["tensors_compared"] == 94


def test_drop_extra_flag(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, tmp_path: Path
) -> None:
    code, text, _ = run(capsys, "--json", "convert", str(tiny_ckpt), str(tmp_path / "kept"))
    kept = json.loads(text)
    assert code == 0 and (kept["linked"], kept["written"], kept["dropped"]) == (3, 0, 0)
    out = tmp_path / "dropped"
    code, text, _ = run(capsys, "--json", "convert", str(tiny_ckpt), str(out), "--drop-extra")
    dropped = json.loads(text)
    assert code == 0 and (dropped["linked"], dropped["written"], dropped["dropped"]) == (0, 3, 3)
    assert dropped["tensors"] == kept["tensors"] - 3


def test_slice_json_and_single_verify(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "slice"
    code, text, _ = run(
        capsys, "--json", "slice", str(tiny_ckpt), str(out), "--layers", "2", "--experts", "3"
    )
    result = json.loads(text)
    assert code == 0 and result["out"] == str(out)
    changes = {c["field"]: (c["before"], c["after"]) for c in result["config_changes"]}
    assert changes["num_hidden_layers"] == (3, 2) and changes["n_routed_experts"] == (8, 3)
    code, text, _ = run(capsys, "verify", str(out))
    assert code == 0 and text.startswith("verify (single): ok")


def test_convert_refusals_are_one_line(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "convert", str(tiny_ckpt), str(tiny_ckpt / "inside"))
    assert code == 2 and err.count("\n") == 1 and "inside the source checkpoint" in err
    code, _, err = run(capsys, "convert", str(tiny_ckpt), str(tmp_path / "o"), "--dtype", "fp4")
    assert (code, err) == (2, "error: --dtype must be one of fp8, bf16, got 'fp4'\n")
    code, _, err = run(
        capsys, "convert", str(tiny_ckpt), str(tmp_path / "o"), "--mode", "link", "--dtype", "bf16"
    )
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_verify_fails_on_a_changed_weight(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, tmp_path: Path
) -> None:
    import shutil

    from k2trt.checkpoint.reader import Checkpoint

    copy = tmp_path / "copy"
    shutil.copytree(tiny_ckpt, copy)
    name = "model.layers.1.self_attn.o_proj.weight"
    with Checkpoint.open(copy) as ckpt:
        info = ckpt.infos[name]
    with open(info.shard, "r+b") as fh:
        fh.seek(info.start)
        byte = fh.read(1)[0]
        fh.seek(info.start)
        fh.write(bytes([byte ^ 0x08]))
    code, text, _ = run(capsys, "verify", str(tiny_ckpt), str(copy))
    assert code == 1 and "FAILED" in text and name in text
