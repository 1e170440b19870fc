"""`k2trt verify`'s human output: readable lines, only the tensors that differ."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_run import run


def test_identical_pair_lists_no_tensor(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_ckpt, copy)
    code, text, _ = run(capsys, "verify", str(tiny_ckpt), str(copy))
    assert code == 0 and text.startswith("verify (pair): ok")
    assert "differs" not in text
    assert "{" not in text and "[" not in text  # no Python reprs


def test_bf16_pair_lists_each_differing_tensor_once(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bf16"
    assert run(capsys, "convert", str(tiny_ckpt), str(out), "--dtype", "bf16")[0] == 0
    code, text, _ = run(capsys, "verify", str(tiny_ckpt), str(out))
    assert code == 0 and "{" not in text and "[" not in text
    differs = [line.split()[1] for line in text.splitlines() if line.startswith("  differs")]
    code, raw, _ = run(capsys, "--json", "verify", str(tiny_ckpt), str(out))
    nonzero = [w["name"] for w in json.loads(raw)["worst"] if w["max_abs"] > 0]
    assert differs and differs == nonzero[:5]
    assert "  logits " in text and "top-1 agree" in text
