"""`k2trt convert` and `k2trt slice`: one streaming, atomic, resumable pipeline.

    open SRC -> validate -> plan tensors (weights.py's table) -> plan shards -> metadata
    -> write shards (threads) -> index -> self-check -> manifest LAST -> rename into place

Everything is built in `.OUT.partial/` beside OUT. Each finished shard is recorded (name, bytes,
sha256) in `.OUT.partial/.k2trt-progress.json`; a re-run with the same options and source skips
shards whose bytes still hash to the record. OUT appears only after its manifest is written.
Unchanged source shards are hard-linked (mode auto/link) or copied; a hard-linked output shares
its inode with the source, so the two must never be edited in place (nothing in k2trt does).
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

from numpy.typing import NDArray

from k2trt.checkpoint.inspection import inspect_checkpoint
from k2trt.checkpoint.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    FileHash,
    checkpoint_files,
    hash_files,
    sha256_file,
    write_manifest,
)
from k2trt.checkpoint.reader import INDEX_NAME, Checkpoint
from k2trt.checkpoint.safetensors import ShardFiles, ShardWriter, build_header, tensor_bytes
from k2trt.convert.metadata import MetadataResult, write_metadata
from k2trt.convert.partial import (
    ProgressLog,
    ShardRecord,
    fingerprint,
    prepare_partial,
    prune,
    publish,
)
from k2trt.convert.weights import (
    Op,
    Selection,
    TensorPlan,
    check_scale,
    plan_tensors,
    read_raw,
    role_of,
    shard_sort_key,
    slice_overrides,
    transform,
)
from k2trt.errors import K2Error
from k2trt.fsutil import files_under, read_json, write_json_atomic
from k2trt.output import Ticker

MODES = ("auto", "link", "copy", "reshard")
DTYPES = ("fp8", "bf16")
DEFAULT_SHARD_SIZE = 5 * 10**9  # what `save_pretrained` uses ("5GB")
SHARD_META = {"format": "pt"}  # transformers refuses shards whose format is not a framework's
COPY_CHUNK = 16 << 20
# errno values that mean "no hard link possible here" (another filesystem, or no link support).
NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class ConvertOptions:
    """What `convert` / `slice` make.

    >>> ConvertOptions(dtype="bf16", layers=2, experts=4).slicing
    True
    """

    dtype: Literal["fp8", "bf16"] = "fp8"  # bf16: dequantize every block-FP8 tensor
    mode: Literal["auto", "link", "copy", "reshard"] = "auto"
    shard_size: int | None = None  # bytes; implies reshard
    keep_extra: bool = False  # keep rotary_emb.inv_freq
    kv_cache_fp8: bool = False
    layers: int | None = None  # slice: layers 0..N-1
    experts: int | None = None  # slice: experts 0..E-1
    workers: int = 2
    force: bool = False

    @property
    def slicing(self) -> bool:
        return self.layers is not None or self.experts is not None

    @property
    def reshards(self) -> bool:
        return self.mode == "reshard" or self.shard_size is not None

    def output_options(self) -> dict[str, Any]:
        """The options the output depends on (not workers or force): fingerprint and manifest."""
        data = asdict(self)
        del data["workers"], data["force"]
        data["shard_size"] = (self.shard_size or DEFAULT_SHARD_SIZE) if self.reshards else None
        return data


@dataclass
class ConvertResult:
    """What a run did; `skipped` counts shards resumed from an interrupted run."""

    out: Path
    tensors: int
    bytes: int  # tensor data bytes in OUT (the index's total_size)
    written: int
    linked: int
    copied: int
    skipped: int
    dropped: int  # source tensors not in OUT
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole run


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


# ---------------------------------------------------------------------------------------------
# The pipeline


def convert_checkpoint(
    src: Path, out: Path, opts: ConvertOptions, progress: Ticker | None = None
) -> ConvertResult:
    """Convert (or slice) `src` into `out`; see the module docstring for the stages.

    >>> convert_checkpoint(Path("Kimi-K2-Instruct"), Path("k2-bf16"),
    ...                    ConvertOptions(dtype="bf16"))  # doctest: +SKIP
    """
    start = time.monotonic()
    check_options(opts)
    check_paths(src, out, opts.force)
    with Checkpoint.open(src, require_weights=True) as ckpt:
        validate_source(src, ckpt, opts)
        plans, dropped = plan_tensors(ckpt, selection(ckpt, opts))
        run = _Run(src, out, opts, ckpt, plan_shards(ckpt, plans, opts), len(dropped), progress)
        with os_errors(run.partial):
            result = build(run)
    result.seconds = round(time.monotonic() - start, 3)
    return result


@dataclass(frozen=True)
class _Run:
    """One conversion, planned: what `build` writes."""

    src: Path
    out: Path
    opts: ConvertOptions
    ckpt: Checkpoint
    jobs: list[ShardJob]
    dropped: int
    progress: Ticker | None

    @property
    def partial(self) -> Path:
        return self.out.with_name(f".{self.out.name}.partial")


def build(run: _Run) -> ConvertResult:
    """Partial dir, metadata, shards, index, self-check, manifest (last), rename into place."""
    partial, opts = run.partial, run.opts
    log, notes = prepare_partial(partial, fingerprint(run.src, opts.output_options()))
    notes += _link_hint(run)
    # Metadata first: a missing tokenizer fails in seconds, not after a terabyte of shards.
    overrides = slice_overrides(run.ckpt.config, opts.layers, opts.experts)
    meta = write_metadata(
        run.src,
        partial,
        dtype=opts.dtype,
        kv_cache_fp8=opts.kv_cache_fp8,
        config_overrides=overrides or None,
    )
    known = source_manifest(run.src)
    block = run.ckpt.config.fp8_block
    ctx = _Context(run.ckpt, partial, opts.mode, block, log, known, _Tick(run.progress))
    if run.progress:
        final_pass = _final_pass_bytes(run.src, run.jobs, known)
        run.progress.total(sum(j.file_bytes() for j in run.jobs) + final_pass)
    records = run_jobs(run.jobs, ctx, opts.workers)
    total = write_index(partial, run.jobs)
    prune(partial, {*(j.name for j in run.jobs), *meta.files, INDEX_NAME})
    self_check(partial)
    sources = source_hashes(run.src, records, ctx, opts.workers)
    write_convert_manifest(partial, records, provenance(run, sources, meta), opts.workers)
    publish(partial, run.out, opts.force)
    return _result(run, records, total, meta, notes)


def _result(
    run: _Run, records: list[ShardRecord], total: int, meta: MetadataResult, notes: list[str]
) -> ConvertResult:
    fresh = [r.how for r in records if not r.resumed]
    return ConvertResult(
        out=run.out,
        tensors=sum(len(j.tensors) for j in run.jobs),
        bytes=total,
        written=fresh.count("write"),
        linked=fresh.count("link"),
        copied=fresh.count("copy"),
        skipped=sum(r.resumed for r in records),
        dropped=run.dropped,
        config_changes=[asdict(c) for c in meta.changes],
        notes=notes,
    )


def _link_hint(run: _Run) -> list[str]:
    """Say when shards are rewritten only to drop inv_freq (every Kimi K2 layer shard is)."""
    only_drops = [
        j
        for j in run.jobs
        if j.how == "write" and j.source and all(p.op is Op.KEEP for p in j.tensors)
    ]
    if not only_drops or run.opts.slicing or run.opts.reshards:
        return []
    how = "copied" if run.opts.mode == "copy" else "hard-linked"
    return [
        f"{len(only_drops)} shard(s) rewritten only to drop rotary_emb.inv_freq; "
        f"with --keep-extra they would be {how}"
    ]


@contextmanager
def os_errors(where: Path) -> Iterator[None]:
    """Filesystem failures outside the shard writers (metadata, index, rename) as one line."""
    try:
        yield
    except OSError as exc:
        raise K2Error(exc.strerror or str(exc), path=exc.filename or where) from None


# ---------------------------------------------------------------------------------------------
# Checks before anything is written


def check_options(opts: ConvertOptions) -> None:
    """Refuse impossible or contradictory options, one line each."""
    if opts.dtype not in DTYPES:
        raise K2Error(f"--dtype must be one of {', '.join(DTYPES)}, got {opts.dtype!r}")
    if opts.mode not in MODES:
        raise K2Error(f"--mode must be one of {', '.join(MODES)}, got {opts.mode!r}")
    counts = {
        "--shard-size": opts.shard_size,
        "--layers": opts.layers,
        "--experts": opts.experts,
        "--workers": opts.workers,
    }
    for name, value in counts.items():
        if value is not None and value < 1:
            raise K2Error(f"{name} must be at least 1, got {value}")
    if opts.shard_size is not None and opts.mode in ("link", "copy"):
        raise K2Error(f"--shard-size repacks every tensor; it contradicts --mode {opts.mode}")
    if opts.mode == "link" and (opts.dtype == "bf16" or opts.slicing):
        what = "--dtype bf16" if opts.dtype == "bf16" else "slicing"
        raise K2Error(f"--mode link keeps shards unchanged; {what} rewrites them (use auto)")


def check_paths(src: Path, out: Path, force: bool) -> None:
    """OUT must not be SRC, inside it, or around it (`--force` would delete the source)."""
    s, o = src.resolve(), out.resolve()
    if o == s:
        raise K2Error("output is the source checkpoint itself", path=out)
    if o.is_relative_to(s):
        raise K2Error(f"output is inside the source checkpoint {src}", path=out)
    if s.is_relative_to(o):
        raise K2Error(f"output would contain the source checkpoint {src}", path=out)
    if (out.exists() or out.is_symlink()) and not force:
        raise K2Error("output already exists (use --force to replace it)", path=out)


def validate_source(src: Path, ckpt: Checkpoint, opts: ConvertOptions) -> None:
    """inspect's checks (refusing on the first finding) and the options against the source."""
    report = inspect_checkpoint(src)
    if report.findings:
        first, more = report.findings[0], len(report.findings) - 1
        extra = f" (and {more} more finding(s); see `k2trt inspect`)" if more else ""
        raise K2Error(f"{first.message}{extra}", path=src / first.file)
    cfg, config = ckpt.config, src / "config.json"
    if opts.dtype == "fp8" and cfg.fp8_block is None:
        raise K2Error("source is not block-FP8 (no fp8 quantization_config): use bf16", path=config)
    if opts.layers is not None and opts.layers > cfg.num_hidden_layers:
        raise K2Error(f"--layers {opts.layers}: source has {cfg.num_hidden_layers}", path=config)
    if opts.experts is not None and opts.experts > cfg.n_routed_experts:
        raise K2Error(f"--experts {opts.experts}: source has {cfg.n_routed_experts}", path=config)


def selection(ckpt: Checkpoint, opts: ConvertOptions) -> Selection:
    cfg = ckpt.config
    # All layers kept: None also keeps the MTP layers that follow them.
    layers = opts.layers if opts.layers and opts.layers < cfg.num_hidden_layers else None
    return Selection(opts.dtype, opts.keep_extra, layers, opts.experts, cfg.n_routed_experts)


# ---------------------------------------------------------------------------------------------
# Shard planning


def plan_shards(ckpt: Checkpoint, plans: list[TensorPlan], opts: ConvertOptions) -> list[ShardJob]:
    """Output shards: the source's (minus empty ones) or, resharding, repacked ones."""
    if opts.reshards:
        return _packed(plans, opts.shard_size or DEFAULT_SHARD_SIZE)
    by_shard: dict[Path, list[TensorPlan]] = {}
    for plan in plans:  # source order: each list is in file order
        by_shard.setdefault(plan.src.shard, []).append(plan)
    counts: dict[Path, int] = {}
    for info in ckpt.infos.values():
        counts[info.shard] = counts.get(info.shard, 0) + 1
    jobs = []
    for path in sorted(by_shard, key=lambda p: shard_sort_key(p.name)):
        kept = by_shard[path]
        unchanged = len(kept) == counts[path] and all(p.op is Op.KEEP for p in kept)
        how: Literal["link", "copy", "write"] = "write"
        if unchanged:
            how = "copy" if opts.mode == "copy" else "link"
        jobs.append(ShardJob(path.name, how, tuple(kept), path))
    return jobs


def _packed(plans: list[TensorPlan], size: int) -> list[ShardJob]:
    """Greedy packing in source order; a tensor larger than `size` gets a shard of its own."""
    groups: list[list[TensorPlan]] = [[]]
    used = 0
    for plan in plans:
        if groups[-1] and used + plan.nbytes > size:
            groups.append([])
            used = 0
        groups[-1].append(plan)
        used += plan.nbytes
    names = reshard_names(len(groups))
    return [ShardJob(n, "write", tuple(g), None) for n, g in zip(names, groups, strict=True)]


def reshard_names(count: int) -> list[str]:
    """Fresh shard names, zero-padded as the 0905 release writes them.

    >>> reshard_names(2)[1]
    'model-00002-of-000002.safetensors'
    """
    return [f"model-{i:05d}-of-{count:06d}.safetensors" for i in range(1, count + 1)]


# ---------------------------------------------------------------------------------------------
# Running the shard jobs


class _Tick:
    """The caller's Ticker, safe to call from worker threads."""

    def __init__(self, ticker: Ticker | None) -> None:
        self._ticker = ticker
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self._ticker is not None:
            with self._lock:
                self._ticker.advance(n)


@dataclass
class _Context:
    """What every shard job shares (read-only but for the log, the ticker and `stop`)."""

    ckpt: Checkpoint
    partial: Path
    mode: str
    block: tuple[int, int] | None
    log: ProgressLog
    known: dict[str, FileHash]  # source hashes from the source's own manifest
    tick: _Tick = field(default_factory=lambda: _Tick(None))
    stop: threading.Event = field(default_factory=threading.Event)


class _Stopped(Exception):
    """A shard abandoned because another one failed (that failure is the one reported)."""


def run_jobs(jobs: list[ShardJob], ctx: _Context, workers: int) -> list[ShardRecord]:
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


def _guarded(job: ShardJob, ctx: _Context) -> ShardRecord | None:
    if ctx.stop.is_set():  # another shard failed: the run is over
        return None
    try:
        return run_job(job, ctx)
    except BaseException:
        ctx.stop.set()
        raise


def run_job(job: ShardJob, ctx: _Context) -> ShardRecord:
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


def _resume(job: ShardJob, ctx: _Context) -> ShardRecord | None:
    """The recorded shard when its file still hashes to the record, else None."""
    prior = ctx.log.records.get(job.name)
    path = ctx.partial / job.name
    if prior is None or not path.is_file() or path.stat().st_size != prior.bytes:
        return None
    if sha256_file(path, ctx.tick).sha256 != prior.sha256:
        return None
    return replace(prior, resumed=True)


def _link(job: ShardJob, dst: Path, ctx: _Context) -> ShardRecord:
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
    # The output's hash is the source's: one read gives both, and checks the source manifest.
    digest = sha256_file(dst, ctx.tick)
    source = _reconcile(FileHash(job.source.name, digest.bytes, digest.sha256), ctx)
    return ShardRecord(job.name, digest.bytes, digest.sha256, "link", source)


def _copy(job: ShardJob, dst: Path, ctx: _Context) -> ShardRecord:
    """Stream the source shard to `dst`, hashing on the way (both files have that hash)."""
    assert job.source is not None
    _check_scales(job)
    tmp = dst.with_name(f".{dst.name}.partial")
    digest, size = hashlib.sha256(), 0
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    try:
        with _open_source(job.source) as fin, open(tmp, "wb", buffering=0) as fout:
            while n := _read_chunk(fin, buf, job.source):
                _check_stop(ctx)
                digest.update(view[:n])
                _write_all(fout, view[:n])
                size += n
                ctx.tick(n)
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    source = _reconcile(FileHash(job.source.name, size, digest.hexdigest()), ctx)
    return ShardRecord(job.name, size, digest.hexdigest(), "copy", source)


def _check_stop(ctx: _Context) -> None:
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


def _write(job: ShardJob, dst: Path, ctx: _Context) -> ShardRecord:
    """Transform and write tensor by tensor, hashing the output (and the source) on the way."""
    header = job.header()
    digest = hashlib.sha256(header)
    hash_source = job.source is not None and job.source.name not in ctx.known
    seq = _SequentialHash(job.source) if hash_source and job.source else None
    files = ShardFiles()
    entries = [p.entry for p in job.tensors]
    try:
        with ShardWriter(dst, entries, metadata=SHARD_META) as writer:
            ctx.tick(len(header))
            for plan in job.tensors:
                _check_stop(ctx)
                raw = read_raw(files, plan.src)
                if seq:
                    seq.take(plan.src.start, raw)
                writer.write_parts(
                    plan.name, _hashed(transform(plan, raw, files, ctx.block), digest, ctx)
                )
        source = seq.finish() if seq else None
    finally:
        files.close()
        if seq:
            seq.close()
    size = len(header) + sum(p.nbytes for p in job.tensors)
    return ShardRecord(job.name, size, digest.hexdigest(), "write", _reconcile(source, ctx))


def _hashed(parts: Iterable[Any], digest: Any, ctx: _Context) -> Iterator[Any]:
    """Pass pieces through to the writer, hashing and counting them on the way."""
    for part in parts:
        data = tensor_bytes(part)
        digest.update(data)
        ctx.tick(len(data))
        yield part


class _SequentialHash:
    """sha256 of a source shard fed in file order: tensors as they are read, the bytes between
    them (header, dropped tensors) by chunked reads, so each shard is read only once."""

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


# ---------------------------------------------------------------------------------------------
# Source hashes


def source_manifest(src: Path) -> dict[str, FileHash]:
    """Hashes from SRC's own manifest, for files whose size still matches (else not trusted)."""
    path = src / MANIFEST_NAME
    if not path.is_file():
        return {}
    data = read_json(path, "manifest")
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return {}
    files = data.get("files")
    if not isinstance(files, dict):
        return {}
    known: dict[str, FileHash] = {}
    for name, entry in files.items():
        target = src / name
        if not (isinstance(entry, dict) and target.is_file() and "/" not in name):
            continue
        size, sha = entry.get("bytes"), entry.get("sha256")
        if size == target.stat().st_size and isinstance(sha, str) and len(sha) == 64:
            known[name] = FileHash(name, size, sha)
    return known


def _reconcile(digest: FileHash | None, ctx: _Context) -> FileHash | None:
    """A source hash taken on the way, checked against the source manifest when it has one."""
    known = ctx.known.get(digest.name) if digest else None
    if digest and known and known.sha256 != digest.sha256:
        raise K2Error(
            f"sha256 {digest.sha256[:16]}... differs from the source manifest's "
            f"{known.sha256[:16]}... (shard modified or corrupt)",
            path=ctx.ckpt.root / digest.name,
        )
    return digest


def _final_pass_bytes(src: Path, jobs: list[ShardJob], known: dict[str, FileHash]) -> int:
    """Source bytes hashed after the shards (files no job reads whole and no manifest covers)."""
    seen = {j.source.name for j in jobs if j.source is not None} | set(known)
    return sum(p.stat().st_size for p in checkpoint_files(src) if p.name not in seen)


def source_hashes(
    src: Path, records: list[ShardRecord], ctx: _Context, workers: int
) -> dict[str, FileHash]:
    """Every source file's hash: taken on the way, from its manifest, or read now."""
    hashes = dict(ctx.known)
    hashes.update({r.source.name: r.source for r in records if r.source is not None})
    files = checkpoint_files(src)
    missing = [p for p in files if p.name not in hashes]
    hashes.update({h.name: h for h in hash_files(missing, workers, ctx.tick)})
    return {p.name: hashes[p.name] for p in files}


# ---------------------------------------------------------------------------------------------
# Index, self-check, manifest


def write_index(partial: Path, jobs: list[ShardJob]) -> int:
    """The index for the shards written; returns total tensor bytes."""
    weight_map = {p.name: job.name for job in jobs for p in job.tensors}
    total = sum(p.nbytes for job in jobs for p in job.tensors)
    write_json_atomic(
        partial / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    return total


def self_check(partial: Path) -> None:
    """The output passes the same inspection the source had to (headers only: cheap)."""
    report = inspect_checkpoint(partial)
    if report.findings:
        raise K2Error(f"converted output fails inspection: {report.findings[0]}", path=partial)


def provenance(run: _Run, sources: dict[str, FileHash], meta: MetadataResult) -> dict[str, Any]:
    """What the manifest records besides the output's hashes."""
    return {
        "kind": "slice" if run.opts.slicing else "convert",
        "options": run.opts.output_options(),
        "source": {
            "path": str(run.src.resolve()),
            "files": {h.name: {"bytes": h.bytes, "sha256": h.sha256} for h in sources.values()},
        },
        "config_changes": [asdict(c) for c in meta.changes],
        "chat_template": meta.chat_template,
        "tensors": sum(len(j.tensors) for j in run.jobs),
        "dropped_tensors": run.dropped,
    }


def output_files(root: Path) -> list[Path]:
    """Every regular file under `root` a manifest covers (subdirectories too; no dotfiles)."""
    return [p for p in files_under(root) if p.relative_to(root).as_posix() != MANIFEST_NAME]


def write_convert_manifest(
    partial: Path, records: list[ShardRecord], extra: dict[str, Any], workers: int
) -> None:
    """The manifest, written last: every output file's sha256 (shards hashed as written)."""
    hashes = {r.name: FileHash(r.name, r.bytes, r.sha256) for r in records}
    others = [p for p in output_files(partial) if p.relative_to(partial).as_posix() not in hashes]
    for path, digest in zip(others, hash_files(others, workers), strict=True):
        name = path.relative_to(partial).as_posix()  # "tokenizer/tokenizer.json"
        hashes[name] = FileHash(name, digest.bytes, digest.sha256)
    try:
        write_manifest(partial / MANIFEST_NAME, [hashes[n] for n in sorted(hashes)], **extra)
    except OSError as exc:
        message = f"cannot write: {exc.strerror or exc}"
        raise K2Error(message, path=partial / MANIFEST_NAME) from None
