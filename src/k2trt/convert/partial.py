"""The hidden `.OUT.partial/` directory of a conversion: its progress record and publishing.

Each finished shard is recorded (name, bytes, sha256) in `.k2trt-progress.json` with a
fingerprint of the options and the source; a re-run with the same fingerprint resumes, any
other starts over. The directory becomes OUT only when `publish` renames it into place.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from k2trt import __version__
from k2trt.checkpoint.manifest import FileHash, checkpoint_files
from k2trt.errors import K2Error
from k2trt.fsutil import dump_json, read_json, write_json_atomic

PROGRESS_NAME = ".k2trt-progress.json"
PROGRESS_FORMAT = "k2trt.convert-progress/1"


@dataclass(frozen=True)
class ShardRecord:
    """A finished output shard, as the progress file and the manifest keep it."""

    name: str
    bytes: int
    sha256: str
    how: str  # link | copy | write
    source: FileHash | None = None  # the source shard, when hashed on the way
    resumed: bool = False


def fingerprint(src: Path, options: dict[str, Any]) -> str:
    """What finished shards depend on: options, k2trt version, the source files as they are."""
    files = [
        [p.name, st.st_size, st.st_mtime_ns] for p in checkpoint_files(src) for st in [p.stat()]
    ]
    data = {
        "k2trt": __version__,
        "options": options,
        "source": str(src.resolve()),
        "files": files,
    }
    return hashlib.sha256(dump_json(data).encode()).hexdigest()


class ProgressLog:
    """`.k2trt-progress.json`: the options fingerprint and every finished shard (thread-safe)."""

    def __init__(self, partial: Path, fingerprint: str, records: dict[str, ShardRecord]) -> None:
        self.path = partial / PROGRESS_NAME
        self.fingerprint = fingerprint
        self.records = records
        self._lock = threading.Lock()

    def record(self, rec: ShardRecord) -> None:
        with self._lock:
            self.records[rec.name] = rec
            self.save()

    def save(self) -> None:
        shards = {n: _record_json(r) for n, r in sorted(self.records.items())}
        data = {"format": PROGRESS_FORMAT, "fingerprint": self.fingerprint, "shards": shards}
        try:
            write_json_atomic(self.path, data)
        except OSError as exc:
            message = f"cannot write progress record: {exc.strerror or exc}"
            raise K2Error(message, path=self.path) from None


def _record_json(rec: ShardRecord) -> dict[str, Any]:
    data = {"bytes": rec.bytes, "sha256": rec.sha256, "how": rec.how, "source": None}
    if rec.source:
        data["source"] = asdict(rec.source)
    return data


def _load_records(path: Path) -> tuple[str, dict[str, ShardRecord]] | None:
    """(fingerprint, records) from a progress file, or None when absent or unreadable."""
    try:
        data = read_json(path, "progress record")
        shards = data["shards"]
        records = {
            name: ShardRecord(
                name,
                int(r["bytes"]),
                str(r["sha256"]),
                str(r["how"]),
                FileHash(**r["source"]) if r["source"] else None,
            )
            for name, r in shards.items()
        }
        return str(data["fingerprint"]), records
    except (K2Error, KeyError, TypeError, ValueError, AttributeError):
        return None


def prepare_partial(partial: Path, fp: str) -> tuple[ProgressLog, list[str]]:
    """Resume `partial` when its fingerprint matches; otherwise start it afresh (and say so)."""
    notes: list[str] = []
    if partial.exists() or partial.is_symlink():
        prior = _load_records(partial / PROGRESS_NAME) if partial.is_dir() else None
        if prior is not None and prior[0] == fp:
            _remove_temps(partial)
            notes.append(f"resuming {partial}: {len(prior[1])} shard(s) recorded as finished")
            return ProgressLog(partial, fp, prior[1]), notes
        why = "the options or the source changed" if prior else "it has no progress record"
        notes.append(f"starting over: {partial} is from an earlier run but {why}")
        _remove(partial)
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise K2Error(f"cannot create: {exc.strerror or exc}", path=partial) from None
    log = ProgressLog(partial, fp, {})
    log.save()  # from now on an interrupted run resumes
    return log, notes


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_temps(partial: Path) -> None:
    """Half-written files of a killed run (writers name them `.NAME.partial`)."""
    for path in partial.rglob(".*.partial"):
        path.unlink(missing_ok=True)


def prune(partial: Path, keep: set[str]) -> None:
    """Drop top-level files this run did not produce (left by an earlier run's metadata)."""
    for path in checkpoint_files(partial):
        if path.name not in keep:
            path.unlink()


def sync_tree(root: Path) -> None:
    """Make everything under `root` durable with one syncfs(2) of its filesystem (an fsync of
    every file where syncfs is unavailable), then fsync its directories: what was written
    without a per-file fsync reaches stable storage before the rename that publishes it."""
    if not _syncfs(root):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                _fsync_path(path, os.O_RDONLY)
    for path in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        _fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def _syncfs(root: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):  # not Linux/glibc
        return False
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if call(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(root))
    finally:
        os.close(fd)
    return True


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(partial: Path, out: Path, force: bool) -> None:
    """Move the finished (synced) directory into place; an old OUT is replaced only with
    `force`. The parent directory is fsynced after, so the rename itself is durable."""
    exists = out.exists() or out.is_symlink()
    if exists and not force:  # it appeared while we worked: keep ours resumable
        raise K2Error("output already exists (use --force to replace it)", path=out)
    (partial / PROGRESS_NAME).unlink(missing_ok=True)
    old = out.with_name(f".{out.name}.old")
    if exists:
        _remove(old)
        os.replace(out, old)
    os.replace(partial, out)
    _fsync_path(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    if old.exists() or old.is_symlink():
        _remove(old)
