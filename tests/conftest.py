"""Shared fixtures: tiny checkpoints made in-process (no network, no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k2trt.synth.checkpoint import write_checkpoint
from k2trt.synth.presets import SynthOptions

# tiktoken caches BPE files by path; tests rewrite files at the same paths.
os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine tiny 0711 checkpoint. Read-only: copy it before changing anything."""
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    write_checkpoint(out, SynthOptions(preset="tiny", seed=0))
    return out


@pytest.fixture(scope="session")
def tiny_0905(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny-0905"
    write_checkpoint(out, SynthOptions(preset="tiny", release="0905", seed=0))
    return out


@pytest.fixture(scope="session")
def prepared_ckpt(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint after `k2trt convert` (tokenizer/ dir, generation_config, manifest).
    Read-only: copy it before changing anything."""
    from k2trt.convert.pipeline import ConvertOptions, convert_checkpoint

    out = tmp_path_factory.mktemp("prepared") / "kimi-k2-tiny"
    convert_checkpoint(tiny_ckpt, out, ConvertOptions())
    return out
