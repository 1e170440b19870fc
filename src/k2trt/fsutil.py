"""Atomic outputs: nothing at the final path looks complete until it is."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from k2trt.errors import K2Error


def dump_json(data: Any) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp file in the same directory, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, dump_json(data))


@contextmanager
def atomic_dir(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Build a directory at a temp path beside `out`, then move it into place.

    Refuses an existing `out` unless `force`; on any failure the temp directory is removed and
    `out` is left as it was.

    >>> with atomic_dir(Path("ckpt")) as tmp:  # doctest: +SKIP
    ...     (tmp / "config.json").write_text("{}")
    """
    if out.exists() and not force:
        raise K2Error("output already exists (use --force to replace it)", path=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def read_json(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; one-line errors naming the file (and line) on failure."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise K2Error(f"{what} not found", path=path) from exc
    except json.JSONDecodeError as exc:
        raise K2Error(f"{what} is not valid JSON: {exc}", path=path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise K2Error(f"cannot read {what}: {exc}", path=path) from exc


def files_under(root: Path) -> list[Path]:
    """Every regular file under `root`, sorted by relative path; hidden names (and what is
    under them: partial outputs, locks) left out."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` at `dst`; copy where a link cannot be made (another filesystem)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
