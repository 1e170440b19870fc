"""Helpers for the release tests: a spec file next to a private copy of the tiny checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from k2trt.release.pipeline import ReleaseOptions, build_release

# Smoke off unless a test asks for it: it starts a tritonserver (see test_release_gates.py).
NO_GATES: dict[str, Any] = {"smoke": {"enabled": False}}


def spec_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "kimi-k2-tiny",
        "version": "1.0.0",
        "checkpoint": {
            "path": "tiny",
            "hf": {"repo": "moonshotai/Kimi-K2-Instruct", "revision": "r1"},
        },
        "build": {"gpus": "H100x1", "context": 4096, "max_batch_size": 8},
        "gates": NO_GATES,
    }
    data.update(overrides)
    return data


def make_project(root: Path, tiny: Path, **overrides: Any) -> Path:
    """ROOT/tiny (a copy of `tiny`) and ROOT/release.yaml; returns the spec path."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "tiny").exists():
        shutil.copytree(tiny, root / "tiny")
    return write_spec(root, **overrides)


def write_spec(root: Path, name: str = "release.yaml", **overrides: Any) -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(spec_data(**overrides), sort_keys=False), encoding="utf-8")
    return path


def files_of(release: Path) -> dict[str, bytes]:
    """Every file of a release directory (relative path -> bytes)."""
    return {
        p.relative_to(release).as_posix(): p.read_bytes()
        for p in sorted(release.rglob("*"))
        if p.is_file()
    }


def build(spec: Path, out: Path, lines: list[str] | None = None, **opts: Any) -> Any:
    """build_release with the progress lines collected."""
    say = lines.append if lines is not None else (lambda line: None)
    return build_release(spec, out, ReleaseOptions(**opts), say=say)
