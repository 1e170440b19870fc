"""`k2trt convert` and `k2trt slice`: one streaming, atomic, resumable pipeline.

    open SRC -> validate -> plan tensors (weights.py's table) -> plan shards -> metadata
    -> make shards (shards.py: link, copy or write; threads) -> index -> self-check
    -> manifest LAST -> one sync -> rename into place

Everything is built in `.OUT.partial/` beside OUT. Each finished shard is recorded (name, bytes,
sha256) in `.OUT.partial/.k2trt-progress.json`; a re-run with the same options and source skips
shards that still hold the recorded bytes. OUT appears only after its manifest is written and
the whole directory synced. Unchanged source shards are hard-linked (mode auto/link) or copied;
a hard-linked output shares its inode with the source, so the two must never be edited in
place (nothing in k2trt does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from k2trt.checkpoint.inspection import inspect_checkpoint
from k2trt.checkpoint.manifest import (
    MANIFEST_NAME,
    FileHash,
    checkpoint_files,
    hash_files,
    write_manifest,
)
from k2trt.checkpoint.reader import INDEX_NAME, Checkpoint
from k2trt.convert.metadata import MetadataResult, write_metadata
from k2trt.convert.partial import (
    ShardRecord,
    fingerprint,
    prepare_partial,
    prune,
    publish,
    sync_tree,
)
from k2trt.convert.shards import Context, ShardJob, Tick, run_jobs
from k2trt.convert.sources import SourceHashes, read_source_hashes, source_manifest
from k2trt.convert.weights import (
    Op,
    Selection,
    TensorPlan,
    plan_tensors,
    shard_sort_key,
    slice_overrides,
)
from k2trt.errors import K2Error
from k2trt.fsutil import files_under, write_json_atomic
from k2trt.output import Ticker

__all__ = ["ConvertOptions", "ConvertResult", "convert_checkpoint", "source_manifest"]

MODES = ("auto", "link", "copy", "reshard")
DTYPES = ("fp8", "bf16")
DEFAULT_SHARD_SIZE = 5 * 10**9  # what `save_pretrained` uses ("5GB")


@dataclass(frozen=True)
class ConvertOptions:
    """What `convert` / `slice` make.

    >>> ConvertOptions(dtype="bf16", layers=2, experts=4).slicing
    True
    """

    dtype: Literal["fp8", "bf16"] = "fp8"  # bf16: dequantize every block-FP8 tensor
    mode: Literal["auto", "link", "copy", "reshard"] = "auto"
    shard_size: int | None = None  # bytes; implies reshard
    drop_extra: bool = False  # drop rotary_emb.inv_freq (kept by default: shards stay linkable)
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
    known = read_source_hashes(run.src)
    block = run.ckpt.config.fp8_block
    ctx = Context(run.ckpt, partial, opts.mode, block, log, known, Tick(run.progress))
    if run.progress:
        final_pass = _final_pass_bytes(run.src, run.jobs, known)
        run.progress.total(sum(j.file_bytes() for j in run.jobs) + final_pass)
    records = run_jobs(run.jobs, ctx, opts.workers)
    total = write_index(partial, run.jobs)
    prune(partial, {*(j.name for j in run.jobs), *meta.files, INDEX_NAME})
    self_check(partial)
    sources = source_hashes(run.src, records, ctx, hash_workers(opts.workers))
    extra = provenance(run, sources, meta)
    write_convert_manifest(partial, records, extra, hash_workers(opts.workers))
    sync_tree(partial)  # one sync for every file written (none was fsynced on its own)
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


def hash_workers(workers: int) -> int:
    """Threads for pure hashing passes: every core (sha256 releases the GIL), at least `workers`."""
    return max(workers, os.cpu_count() or 1)


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
        f"without --drop-extra they would be {how}"
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
    return Selection(opts.dtype, opts.drop_extra, layers, opts.experts, cfg.n_routed_experts)


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
# Source hashes


def _final_pass_bytes(src: Path, jobs: list[ShardJob], known: SourceHashes) -> int:
    """Source bytes hashed after the shards (files no job reads whole and no manifest covers)."""
    seen = {j.source.name for j in jobs if j.source is not None} | set(known.trusted)
    return sum(p.stat().st_size for p in checkpoint_files(src) if p.name not in seen)


def source_hashes(
    src: Path, records: list[ShardRecord], ctx: Context, workers: int
) -> dict[str, FileHash]:
    """Every source file's hash: taken on the way, from its manifest, or read now."""
    hashes = dict(ctx.known.trusted)
    hashes.update({r.source.name: r.source for r in records if r.source is not None})
    files = checkpoint_files(src)
    missing = [p for p in files if p.name not in hashes]
    for digest in hash_files(missing, workers, ctx.tick):
        hashes[digest.name] = ctx.known.check(digest, src) or digest
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
