"""Making the output shards: link, copy or write each one, hashing every byte once.

- link: a hard link to the source shard (same inode). Its sha256 is the source manifest's when
  that is trusted (size and mtime as recorded), else the file is read once for both.
- copy: `copy_file_range` (the kernel copies, or reflinks where the filesystem can) when the
  hash is trusted; otherwise a user-space copy that hashes the bytes on their way through.
- write: tensors transformed and written in pieces; the output is hashed from the bytes as they
  are written (never read back), the source from the bytes as they are read.

No shard is fsynced here: the pipeline syncs the finished output once before publishing it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

from numpy.typing import NDArray

from k2trt.checkpoint.manifest import FileHash, sha256_file
from k2trt.checkpoint.reader import Checkpoint
from k2trt.checkpoint.safetensors import ShardFiles, ShardWriter, build_header, tensor_bytes
from k2trt.convert.partial import ProgressLog, ShardRecord
from k2trt.convert.sources import SourceHashes
from k2trt.convert.weights import TensorPlan, check_scale, read_raw, role_of, transform
from k2trt.errors import K2Error
from k2trt.output import Ticker

SHARD_META = {"format": "pt"}  # transformers refuses shards whose format is not a framework's
COPY_CHUNK = 16 << 20
# errno values that mean "no hard link possible here" (another filesystem, or no link support).
NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
# errno values that mean "no in-kernel copy between these files": fall back to user space.
NO_KERNEL_COPY = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}
)


@dataclass(frozen=True)
class ShardJob:
    """One output shard: its tensors in write order and how it is made."""

    name: str
    how: Literal["link", "copy", "write"]
    tensors: tuple[TensorPlan, ...]
    source: Path | None  # the source shard it mirrors (not when resharding)

    def header(self) -> bytes:
        return build_header([p.entry for p in self.tensors], SHARD_META)[0]

    def file_bytes(self) -> int:
        if self.how != "write" and self.source is not None:
            return self.source.stat().st_size
        return len(self.header()) + sum(p.nbytes for p in self.tensors)


class Tick:
    """The caller's Ticker, safe to call from worker threads."""

    def __init__(self, ticker: Ticker | None) -> None:
        self._ticker = ticker
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self._ticker is not None:
            with self._lock:
                self._ticker.advance(n)


@dataclass
class Context:
    """What every shard job shares (read-only but for the log, the ticker and `stop`)."""

    ckpt: Checkpoint
    partial: Path
    mode: str
    block: tuple[int, int] | None
    log: ProgressLog
    known: SourceHashes  # the source's own manifest
    tick: Tick = field(default_factory=lambda: Tick(None))
    stop: threading.Event = field(default_factory=threading.Event)

    def trusted(self, source: Path | None) -> FileHash | None:
        return self.known.trusted.get(source.name) if source is not None else None


class _Stopped(Exception):
    """A shard abandoned because another one failed (that failure is the one reported)."""


def run_jobs(jobs: list[ShardJob], ctx: Context, workers: int) -> list[ShardRecord]:
    """Every shard, `workers` at a time; the first failure (or Ctrl-C) stops the others."""
    done: dict[str, ShardRecord] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="k2trt-shard") as pool:
        futures = [pool.submit(_guarded, job, ctx) for job in jobs]
        try:
            for future in as_completed(futures):
                try:
                    rec = future.result()
                except _Stopped:
                    continue  # the failure that stopped it arrives as its own future
                if rec is not None:
                    done[rec.name] = rec
        except BaseException:
            ctx.stop.set()
            for future in futures:
                future.cancel()
            raise
    return [done[job.name] for job in jobs]


def _guarded(job: ShardJob, ctx: Context) -> ShardRecord | None:
    if ctx.stop.is_set():  # another shard failed: the run is over
        return None
    try:
        return run_job(job, ctx)
    except BaseException:
        ctx.stop.set()
        raise


def run_job(job: ShardJob, ctx: Context) -> ShardRecord:
    resumed = _resume(job, ctx)
    if resumed is not None:
        return resumed
    dst = ctx.partial / job.name
    try:
        if job.how == "link":
            rec = _link(job, dst, ctx)
        elif job.how == "copy":
            rec = _copy(job, dst, ctx)
        else:
            rec = _write(job, dst, ctx)
    except OSError as exc:
        raise K2Error(f"cannot write shard: {exc.strerror or exc}", path=dst) from None
    ctx.log.record(rec)
    return rec


def _resume(job: ShardJob, ctx: Context) -> ShardRecord | None:
    """The recorded shard when it still holds the recorded bytes, else None. A link to a
    trusted source shard is taken as it is; anything else is hashed again."""
    prior = ctx.log.records.get(job.name)
    path = ctx.partial / job.name
    if prior is None or not path.is_file() or path.stat().st_size != prior.bytes:
        return None
    trusted = ctx.trusted(job.source)
    if prior.how == "link" and trusted and job.source and os.path.samefile(path, job.source):
        ok = trusted.sha256 == prior.sha256
        ctx.tick(prior.bytes)
    else:
        ok = sha256_file(path, ctx.tick).sha256 == prior.sha256
    return replace(prior, resumed=True) if ok else None


def _link(job: ShardJob, dst: Path, ctx: Context) -> ShardRecord:
    assert job.source is not None
    dst.unlink(missing_ok=True)
    try:
        os.link(job.source, dst)
    except OSError as exc:
        if exc.errno not in NO_LINK:
            raise
        if ctx.mode == "link":
            raise K2Error(
                f"cannot hard-link {job.source} ({exc.strerror}: another filesystem?); "
                f"use --mode copy or auto",
                path=dst,
            ) from None
        return _copy(job, dst, ctx)
    _check_scales(job)
    digest = ctx.trusted(job.source)
    if digest is not None:
        ctx.tick(digest.bytes)
    else:  # one read gives the hash of both files (one inode)
        got = sha256_file(dst, ctx.tick)
        digest = ctx.known.check(FileHash(job.source.name, got.bytes, got.sha256), ctx.ckpt.root)
    assert digest is not None
    return ShardRecord(job.name, digest.bytes, digest.sha256, "link", digest)


def _copy(job: ShardJob, dst: Path, ctx: Context) -> ShardRecord:
    """A copy of the source shard: in the kernel when its hash is trusted, else hashed on the
    way through user space (one read either way; both files have that hash)."""
    assert job.source is not None
    _check_scales(job)
    tmp = dst.with_name(f".{dst.name}.partial")
    trusted = ctx.trusted(job.source)
    hashed: FileHash | None = None
    try:
        with _open_source(job.source) as fin, open(tmp, "wb", buffering=0) as fout:
            if trusted is None or not _kernel_copy(fin, fout, trusted.bytes, job.source, ctx):
                hashed = _user_copy(fin, fout, job.source, ctx)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    digest = trusted if hashed is None else ctx.known.check(hashed, ctx.ckpt.root)
    assert digest is not None
    return ShardRecord(job.name, digest.bytes, digest.sha256, "copy", digest)


def _kernel_copy(fin: BinaryIO, fout: BinaryIO, size: int, source: Path, ctx: Context) -> bool:
    """copy_file_range the whole file; False when the kernel cannot (before any byte moved)."""
    done = 0
    while done < size:
        _check_stop(ctx)
        try:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), min(COPY_CHUNK * 4, size - done))
        except OSError as exc:
            if done == 0 and exc.errno in NO_KERNEL_COPY:
                return False
            raise
        if n == 0:
            raise K2Error(f"file ended at byte {done} while copying", path=source)
        done += n
        ctx.tick(n)
    return True


def _user_copy(fin: BinaryIO, fout: BinaryIO, source: Path, ctx: Context) -> FileHash:
    digest, size = hashlib.sha256(), 0
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    while n := _read_chunk(fin, buf, source):
        _check_stop(ctx)
        digest.update(view[:n])
        _write_all(fout, view[:n])
        size += n
        ctx.tick(n)
    return FileHash(source.name, size, digest.hexdigest())


def _check_stop(ctx: Context) -> None:
    if ctx.stop.is_set():
        raise _Stopped


def _open_source(path: Path) -> BinaryIO:
    try:
        return open(path, "rb", buffering=0)
    except OSError as exc:
        raise K2Error(f"cannot read shard: {exc.strerror or exc}", path=path) from None


def _read_chunk(fh: BinaryIO, buf: bytearray, path: Path) -> int:
    try:
        return fh.readinto(buf) or 0  # type: ignore[attr-defined]
    except OSError as exc:
        raise K2Error(f"cannot read shard: {exc.strerror or exc}", path=path) from None


def _write_all(fh: BinaryIO, data: memoryview) -> None:
    while data:
        n = fh.write(data)
        data = data[n:]


def _check_scales(job: ShardJob) -> None:
    """Linked and copied shards are not transformed; their scales are still checked."""
    files = ShardFiles()
    try:
        for plan in job.tensors:
            if role_of(plan.name, plan.src.dtype) == "scale":
                check_scale(plan.src, read_raw(files, plan.src))
    finally:
        files.close()


def _write(job: ShardJob, dst: Path, ctx: Context) -> ShardRecord:
    """Transform and write tensor by tensor, hashing the output (and the source) on the way."""
    header = job.header()
    digest = hashlib.sha256(header)
    untrusted = job.source if ctx.trusted(job.source) is None else None
    seq = _SequentialHash(untrusted) if untrusted is not None else None
    files = ShardFiles()
    entries = [p.entry for p in job.tensors]
    try:
        with ShardWriter(dst, entries, metadata=SHARD_META, sync=False) as writer:
            ctx.tick(len(header))
            for plan in job.tensors:
                _check_stop(ctx)
                pieces = transform(plan, files, ctx.block, seq.take if seq else None)
                writer.write_parts(plan.name, _hashed(pieces, digest, ctx))
        source = seq.finish() if seq else ctx.trusted(job.source)
    finally:
        files.close()
        if seq:
            seq.close()
    size = len(header) + sum(p.nbytes for p in job.tensors)
    source = ctx.known.check(source, ctx.ckpt.root)
    return ShardRecord(job.name, size, digest.hexdigest(), "write", source)


def _hashed(parts: Iterable[Any], digest: Any, ctx: Context) -> Iterator[Any]:
    """Pass pieces through to the writer, hashing and counting them on the way."""
    for part in parts:
        data = tensor_bytes(part)
        digest.update(data)
        ctx.tick(len(data))
        yield part


class _SequentialHash:
    """sha256 of a source shard fed in file order: tensor bytes as they are read, the bytes
    between them (header, dropped tensors, cut rows) by chunked reads; each byte read once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise K2Error(f"cannot read shard: {exc.strerror or exc}", path=path) from None
        self._size = os.fstat(self._fd).st_size
        self._pos = 0
        self._digest = hashlib.sha256()

    def take(self, start: int, data: NDArray[Any]) -> None:
        self._catch_up(start)
        self._digest.update(data.data)
        self._pos = start + data.nbytes

    def _catch_up(self, offset: int) -> None:
        while self._pos < offset:
            try:
                chunk = os.pread(self._fd, min(COPY_CHUNK, offset - self._pos), self._pos)
            except OSError as exc:
                raise K2Error(f"cannot read: {exc.strerror or exc}", path=self.path) from None
            if not chunk:
                raise K2Error(f"file ended at byte {self._pos} while reading", path=self.path)
            self._digest.update(chunk)
            self._pos += len(chunk)

    def finish(self) -> FileHash:
        self._catch_up(self._size)
        return FileHash(self.path.name, self._size, self._digest.hexdigest())

    def close(self) -> None:
        os.close(self._fd)
