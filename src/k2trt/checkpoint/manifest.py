"""sha256 manifests, streamed: bounded memory whatever the file sizes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2trt import __version__
from k2trt.checkpoint.safetensors import iter_chunks
from k2trt.errors import K2Error
from k2trt.fsutil import is_inside, write_json_atomic

MANIFEST_NAME = "k2trt-manifest.json"
MANIFEST_FORMAT = "k2trt.manifest/1"


@dataclass(frozen=True)
class FileHash:
    name: str
    bytes: int
    sha256: str


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> FileHash:
    """Hash one file through a fixed buffer; `progress(n)` after each chunk.

    >>> sha256_file(Path("config.json")).sha256  # doctest: +SKIP
    """
    digest = hashlib.sha256()
    size = 0
    for chunk in iter_chunks(path):
        digest.update(chunk)  # releases the GIL: threads hash files in parallel
        size += len(chunk)
        if progress:
            progress(len(chunk))
    return FileHash(path.name, size, digest.hexdigest())


def hash_files(
    paths: list[Path], workers: int = 2, progress: Callable[[int], None] | None = None
) -> list[FileHash]:
    """Hash files in parallel, largest first; results in the order given."""
    order = sorted(range(len(paths)), key=lambda i: -paths[i].stat().st_size)
    results: dict[int, FileHash] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {i: pool.submit(sha256_file, paths[i], progress) for i in order}
        for i, future in futures.items():
            results[i] = future.result()
    return [results[i] for i in range(len(paths))]


def pin_files(
    root: Path,
    paths: list[Path],
    known: Mapping[str, FileHash] | None = None,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """{path relative to root: {bytes, sha256, mtime_ns}}: a manifest that can be re-checked
    cheaply (`pin_changed`). A file in `known` (hashes the caller has checked) with the same
    size is not read again; the others are hashed in parallel.

    >>> pin_files(Path("ckpt"), [Path("ckpt/config.json")])  # doctest: +SKIP
    {'config.json': {'bytes': 1234, 'sha256': '...', 'mtime_ns': ...}}
    """
    names = [p.relative_to(root).as_posix() for p in paths]
    stats = [p.stat() for p in paths]  # before hashing: a later write moves the mtime
    known = known or {}
    fresh = [
        p
        for p, n, st in zip(paths, names, stats, strict=True)
        if n not in known or known[n].bytes != st.st_size
    ]
    hashed = dict(zip(fresh, hash_files(fresh, workers, progress), strict=True))
    return {
        n: {
            "bytes": st.st_size,
            "sha256": (hashed.get(p) or known[n]).sha256,
            "mtime_ns": st.st_mtime_ns,
        }
        for p, n, st in zip(paths, names, stats, strict=True)
    }


def pin_changed(path: Path, want: Mapping[str, Any], rehash: bool = False) -> str | None:
    """Why `path` no longer matches its pin (missing, size, sha256), or None when it does.
    The sha256 is only re-read when the mtime moved (as git and rsync decide) or `rehash`."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "is missing"
    if stat.st_size != want["bytes"]:
        return f"size {stat.st_size:,} bytes, recorded {want['bytes']:,}"
    if not rehash and stat.st_mtime_ns == want.get("mtime_ns"):
        return None
    got = sha256_file(path).sha256
    if got != want["sha256"]:
        return f"sha256 {got[:12]}..., recorded {want['sha256'][:12]}..."
    return None


def checkpoint_files(root: Path) -> list[Path]:
    """The top-level regular files a manifest covers (not dotfiles, not the manifest); one that
    resolves outside `root` (a symlink) is refused: what we read stays inside the checkpoint."""
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST_NAME
    )
    for path in files:
        if not is_inside(path, root):
            raise K2Error("resolves outside the checkpoint directory (symlink?)", path=path)
    return files


def manifest_data(
    hashes: list[FileHash], mtimes: Mapping[str, int] | None = None, **extra: Any
) -> dict[str, Any]:
    """The manifest; `mtimes` (name -> st_mtime_ns taken before hashing) lets a reader reuse a
    hash while size and mtime still match (as `pin_changed` decides)."""
    files: dict[str, dict[str, Any]] = {}
    for h in hashes:
        files[h.name] = {"bytes": h.bytes, "sha256": h.sha256}
        if mtimes and h.name in mtimes:
            files[h.name]["mtime_ns"] = mtimes[h.name]
    return {
        "format": MANIFEST_FORMAT,
        "k2trt_version": __version__,
        "algorithm": "sha256",
        "files": files,
        **extra,
    }


def write_manifest(
    path: Path, hashes: list[FileHash], mtimes: Mapping[str, int] | None = None, **extra: Any
) -> None:
    write_json_atomic(path, manifest_data(hashes, mtimes, **extra))
