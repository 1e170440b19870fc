"""`k2trt release build`: inspect -> convert -> verify -> build -> package -> gates -> release.

Every stage is an existing k2trt stage run on the spec's inputs in a work directory, with a
record (`release.stages`), so a killed release resumes at the first unfinished stage and a
changed input re-runs from the first stage it affects. The release itself is assembled last
(`release.assemble`), aside, and renamed into place only when every gate passed.

    WORK/                       default OUT/.work/NAME/VERSION
      stages/*.json             the stage records
      source-manifest.json      the source checkpoint's files: names, sizes, sha256
      prepared/                 `k2trt convert` output (what the serving nodes load)
      bundle/                   `k2trt build` output (LLM API options + record)
      triton/                   `k2trt package` output, placed for the serving nodes
      gates/                    gate reports (+ the perf recipe)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from k2trt.checkpoint.inspection import InspectOptions, inspect_checkpoint
from k2trt.checkpoint.manifest import (
    MANIFEST_NAME,
    FileHash,
    checkpoint_files,
    hash_files,
    manifest_data,
)
from k2trt.errors import CheckFailed, K2Error
from k2trt.fsutil import files_under, read_json, write_json_atomic
from k2trt.output import Ticker
from k2trt.release.spec import ReleaseSpec, resolve
from k2trt.release.stages import Outcome, Record, Stage, digest, run_stages
from k2trt.typed import to_plain

SOURCE_MANIFEST = "source-manifest.json"
PREPARED = "prepared"
BUNDLE = "bundle"
TRITON = "triton"
GATES = "gates"
WORK_DIR = ".work"

Progress = Callable[[str, int | None], AbstractContextManager[Ticker]]


def no_progress(description: str, total: int | None) -> AbstractContextManager[Ticker]:
    return nullcontext(Ticker())


@dataclass(frozen=True)
class ReleaseOptions:
    """How to build (nothing here changes what the release contains, but include_weights)."""

    workdir: Path | None = None  # default OUT/.work/NAME/VERSION
    include_weights: bool = False  # copy the prepared weights into the release
    sign_key: Path | None = None  # EC private key (PEM) for model-signing
    force: bool = False  # replace an existing local release directory
    rehash: bool = False  # re-read every recorded output instead of trusting size + mtime
    workers: int = 2


@dataclass
class Context:
    """One release build: the spec, where things are, and how to report."""

    spec: ReleaseSpec
    spec_dir: Path
    out: Path
    opts: ReleaseOptions
    say: Callable[[str], None] = lambda line: None
    progress: Progress = no_progress
    records: dict[str, Record] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        default = self.out / WORK_DIR / self.spec.name / self.spec.version
        return (self.opts.workdir or default).resolve()

    @property
    def dest(self) -> Path:
        return self.out / self.spec.name / self.spec.version

    @property
    def source(self) -> Path:
        return resolve(self.spec_dir, self.spec.checkpoint.path)

    @property
    def prepared(self) -> Path:
        return self.work / PREPARED

    def previous(self) -> Path | None:
        """The release to compare with: a version beside this one, or a directory."""
        prev = self.spec.previous
        if prev is None:
            return None
        beside = self.out / self.spec.name / prev
        path = beside if beside.is_dir() else resolve(self.spec_dir, prev)
        if not (path / "release.json").is_file():
            raise K2Error(
                f"previous: no release at {path} (a version beside this one or a release directory)"
            )
        return path


# ---- inspect ----


def trusted_manifest(src: Path) -> dict[str, FileHash]:
    """Hashes from SRC's own `k2trt inspect --hash` manifest, for files it lists with the same
    size and no later mtime than the manifest itself (so an unchanged checkpoint is not read
    again); nothing when there is no such manifest."""
    from k2trt.convert.pipeline import source_manifest

    path = src / MANIFEST_NAME
    if not path.is_file():
        return {}
    written = path.stat().st_mtime_ns
    return {
        name: h
        for name, h in source_manifest(src).items()
        if (src / name).stat().st_mtime_ns <= written
    }


def _source_listing(ctx: Context) -> dict[str, list[int]]:
    src = ctx.source
    if not src.is_dir():
        raise K2Error("checkpoint.path: not a directory", path=src)
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in checkpoint_files(src)}


def inspect_inputs(ctx: Context) -> dict[str, str]:
    return {
        "checkpoint spec": digest(to_plain(ctx.spec.checkpoint)),
        "source files": digest(_source_listing(ctx)),
    }


def inspect_run(ctx: Context) -> Outcome:
    """Deep inspection (every block scale), then every file's sha256 (the source's own
    manifest stands in for files it covers), checked against the spec's expected hashes."""
    src = ctx.source
    report = inspect_checkpoint(src, InspectOptions(deep=True))
    if not report.has_weights:
        raise K2Error("checkpoint.path: no weights (model.safetensors.index.json)", path=src)
    if report.findings:
        raise CheckFailed(
            f"inspect: {len(report.findings)} finding(s), first: {report.findings[0]}", path=src
        )
    known = trusted_manifest(src)
    fresh = [p for p in checkpoint_files(src) if p.name not in known]
    with ctx.progress("hashing the checkpoint", sum(p.stat().st_size for p in fresh)) as tick:
        hashes = {h.name: h for h in hash_files(fresh, ctx.opts.workers, tick)}
    hashes.update(known)
    _check_expected(ctx, hashes)
    hf = ctx.spec.checkpoint.hf
    data = manifest_data([hashes[n] for n in sorted(hashes)], hf=to_plain(hf))
    write_json_atomic(ctx.work / SOURCE_MANIFEST, data)
    result = {
        "architecture": report.architecture,
        "model_type": report.model_type,
        "release": report.release,
        "parameters": report.params.stored,
        "activated": report.params.activated,
        "tensors": report.tensors,
        "shards": report.shards,
        "scales_scanned": report.scales_scanned,
        "files": len(hashes),
        "bytes": sum(h.bytes for h in hashes.values()),
    }
    log = {"hashed_files": len(fresh), "hashes_from_source_manifest": len(known)}
    return Outcome([ctx.work / SOURCE_MANIFEST], result, log)


def _check_expected(ctx: Context, hashes: dict[str, FileHash]) -> None:
    for name, want in sorted(ctx.spec.checkpoint.sha256.items()):
        if name not in hashes:
            raise CheckFailed(
                f"checkpoint.sha256 lists {name}, which the checkpoint does not have",
                path=ctx.source,
            )
        got = hashes[name].sha256
        if got != want:
            raise CheckFailed(
                f"sha256 {got[:16]}... differs from checkpoint.sha256's {want[:16]}...",
                path=ctx.source / name,
            )


# ---- convert, verify ----


def _digest_of(ctx: Context, stage: str) -> str:
    return ctx.records[stage].outputs_digest()


def convert_inputs(ctx: Context) -> dict[str, str]:
    return {
        "source checkpoint": _digest_of(ctx, "inspect"),
        "convert options": digest(to_plain(ctx.spec.convert)),
    }


def convert_run(ctx: Context) -> Outcome:
    """`k2trt convert` (or `slice`) into WORK/prepared; its own resume covers a kill inside."""
    from k2trt.convert.pipeline import ConvertOptions, convert_checkpoint

    c = ctx.spec.convert
    opts = ConvertOptions(
        dtype="bf16" if c.dtype == "bf16" else "fp8",
        drop_extra=c.drop_extra,
        kv_cache_fp8=c.kv_cache_fp8,
        layers=c.layers,
        experts=c.experts,
        workers=ctx.opts.workers,
        force=True,
    )
    with ctx.progress("converting", None) as tick:
        done = convert_checkpoint(ctx.source, ctx.prepared, opts, tick)
    manifest = read_json(ctx.prepared / MANIFEST_NAME, "manifest")
    known = {
        f"{PREPARED}/{name}": FileHash(name, entry["bytes"], entry["sha256"])
        for name, entry in manifest["files"].items()
    }
    result = {
        "kind": manifest["kind"],
        "tensors": done.tensors,
        "bytes": done.bytes,
        "dropped_tensors": done.dropped,
        "config_changes": done.config_changes,
        "chat_template": {k: manifest["chat_template"].get(k) for k in ("name", "sha256")},
    }
    log = {"written": done.written, "linked": done.linked, "resumed": done.skipped}
    return Outcome(files_under(ctx.prepared), result, log, known)


def verify_inputs(ctx: Context) -> dict[str, str]:
    return {
        "prepared checkpoint": _digest_of(ctx, "convert"),
        "source checkpoint": _digest_of(ctx, "inspect"),
    }


def verify_run(ctx: Context) -> Outcome:
    """The prepared checkpoint loads and runs in transformers, and agrees with the source."""
    from k2trt.convert.verify import verify_checkpoint

    single = verify_checkpoint(ctx.prepared)
    pair = verify_checkpoint(ctx.source, ctx.prepared)
    findings = single.findings + pair.findings
    if findings:
        raise CheckFailed(f"verify: {len(findings)} finding(s), first: {findings[0]}")
    result = {
        "loaded_tensors": single.tensors_compared,
        "greedy_tokens": single.greedy_tokens,
        "compared_tensors": pair.tensors_compared,
        "candidate_tensors": pair.tensors_total,
        "worst_relative_error": max((w.max_rel for w in pair.worst), default=0.0),
    }
    return Outcome([], result, {"timings": {**single.timings, **pair.timings}})


# ---- build, package ----


def build_inputs(ctx: Context) -> dict[str, str]:
    return {
        "prepared checkpoint": _digest_of(ctx, "convert"),
        "build spec": digest(ctx.spec.build.to_dict()),
        "checkpoint path": digest(ctx.spec.checkpoint_path()),
    }


def build_run(ctx: Context) -> Outcome:
    """The engine bundle; the options point at where the serving nodes keep the weights."""
    from k2trt.build.bundle import build_bundle

    prefix = f"{PREPARED}/"
    known = {
        name[len(prefix) :]: FileHash(name, pin["bytes"], pin["sha256"])
        for name, pin in ctx.records["convert"].outputs.items()
        if name.startswith(prefix)
    }
    bundle = build_bundle(
        ctx.prepared,
        ctx.work / BUNDLE,
        ctx.spec.build,
        force=True,
        serve_path=ctx.spec.checkpoint_path(),
        known=known,
    )
    r = bundle.record
    result = {
        "model_id": bundle.model_id,
        "gpu": bundle.gpu,
        "gpus": r["gpus"]["count"],
        "gpus_per_node": bundle.gpus_per_node,
        "nodes": bundle.nodes,
        "layout": r["layout"]["label"],
        "world_size": bundle.world_size,
        "options_sha256": r["options"]["sha256"],
        "moe_backend": bundle.options["moe_config"]["backend"],
        "kv_cache_dtype": bundle.options["kv_cache_config"]["dtype"],
        "max_seq_len": bundle.options["max_seq_len"],
        "kv_tokens_total": r["plan"]["kv_tokens_total"],
    }
    return Outcome(files_under(ctx.work / BUNDLE), result)


def placement_of(spec: ReleaseSpec) -> Any:
    """Where the serving nodes find the weights, the repository and the engine options, from
    the spec alone (release.bluegreen reads it back)."""
    from k2trt.triton_repo.repository import REPOSITORY_DIR, Placement

    install = spec.install_dir()
    return Placement(
        checkpoint=spec.checkpoint_path(),
        repository=f"{install}/{TRITON}/{REPOSITORY_DIR}",
        bundle=f"{install}/engine",
        image=f"k2trt-{spec.name}:{spec.version}",
    )


def release_tag(ctx: Context) -> Any:
    """What the packaged configs record of this release: name, version and engine part (the
    same figures release.json's `engine` holds), so a running Triton can tell them."""
    from k2trt.release.assemble import engine_part
    from k2trt.triton_repo.spec import ReleaseTag

    manifest = read_json(ctx.prepared / MANIFEST_NAME, "prepared checkpoint manifest")
    files = {name: f["sha256"] for name, f in manifest["files"].items()}
    engine = engine_part(files, ctx.records["build"].result["options_sha256"])
    return ReleaseTag(
        name=ctx.spec.name,
        version=ctx.spec.version,
        engine_id=engine["id"],
        weights_sha256=engine["weights_sha256"],
        options_sha256=engine["options_sha256"],
    )


def package_inputs(ctx: Context) -> dict[str, str]:
    return {
        "bundle": _digest_of(ctx, "build"),
        "package spec": digest(to_plain(ctx.spec.package)),
        # the release tag (release_tag) needs no input of its own: its name and version are
        # the placement's, its engine figures the bundle's (options, checkpoint hashes)
        "placement": digest(to_plain(placement_of(ctx.spec))),
    }


def package_run(ctx: Context) -> Outcome:
    from k2trt.build.bundle import Bundle
    from k2trt.triton_repo.repository import package

    bundle = Bundle.load(ctx.work / BUNDLE, check_hashes=False)
    pkg = package(
        bundle,
        ctx.work / TRITON,
        force=True,
        container=ctx.spec.package.container,
        placement=placement_of(ctx.spec),
        release=release_tag(ctx),
    )
    result = {
        "models": pkg.record["models"],
        "launch": sorted(p.name for p in (pkg.path / "launch").iterdir()),
        "container": pkg.record["container"],
        "world_size": pkg.record["world_size"],
        "nodes": pkg.record["nodes"],
    }
    return Outcome(files_under(ctx.work / TRITON), result)


# ---- gates ----


def gates_inputs(ctx: Context) -> dict[str, str]:
    from k2trt.release.gates import engine_for, smoke_checkpoint

    inputs = {
        "triton repository": _digest_of(ctx, "package"),
        "prepared checkpoint": _digest_of(ctx, "convert"),
        "gates spec": digest(to_plain(ctx.spec.gates)),
        "smoke engine": digest(engine_for(ctx.spec.gates.smoke)),
    }
    standin = smoke_checkpoint(ctx)
    if standin is not None and standin != ctx.prepared:
        listing = {
            p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in checkpoint_files(standin)
        }
        inputs["smoke checkpoint"] = digest(listing)
    return inputs


def gates_run(ctx: Context) -> Outcome:
    from k2trt.release.gates import run_gates

    results = run_gates(ctx)
    failed = [g for g in results.values() if g["status"] == "fail"]
    if failed:
        first = failed[0]
        raise CheckFailed(
            f"gate {first['gate']} failed: {first['failures'][0]} "
            f"(report: {ctx.work / GATES / (first['gate'] + '.json')})"
        )
    return Outcome(files_under(ctx.work / GATES), {"gates": results})


STAGES: tuple[
    tuple[str, Callable[[Context], dict[str, str]], Callable[[Context], Outcome]], ...
] = (
    ("inspect", inspect_inputs, inspect_run),
    ("convert", convert_inputs, convert_run),
    ("verify", verify_inputs, verify_run),
    ("build", build_inputs, build_run),
    ("package", package_inputs, package_run),
    ("gates", gates_inputs, gates_run),
)


def stage_options(ctx: Context) -> dict[str, dict[str, Any]]:
    """What each stage's record shows of the spec (its inputs' digests cover the same)."""
    spec = ctx.spec
    return {
        "inspect": {"checkpoint": to_plain(spec.checkpoint), "deep": True},
        "convert": to_plain(spec.convert),
        "verify": {"single": True, "pair": True},
        "build": {**spec.build.to_dict(), "serve_path": spec.checkpoint_path()},
        "package": {**to_plain(spec.package), "placement": to_plain(placement_of(ctx.spec))},
        "gates": to_plain(spec.gates),
    }


def stages(ctx: Context) -> list[Stage]:
    """The stage list bound to one release build."""
    options = stage_options(ctx)
    return [
        Stage(name, partial(inputs, ctx), partial(run, ctx), options[name])
        for name, inputs, run in STAGES
    ]


def build_release(
    spec_path: Path,
    out: Path,
    opts: ReleaseOptions = ReleaseOptions(),
    say: Callable[[str], None] = lambda line: None,
    progress: Progress = no_progress,
) -> Any:
    """Build (or resume) the release `spec_path` describes into OUT/NAME/VERSION.

    >>> build_release(Path("release.yaml"), Path("releases")).path  # doctest: +SKIP
    PosixPath('releases/kimi-k2/1.0.0')
    """
    from k2trt.release.assemble import assemble

    spec = ReleaseSpec.load(spec_path)
    ctx = Context(spec, spec_path.resolve().parent, out, opts, say, progress)
    if ctx.dest.exists() and not opts.force:
        raise K2Error(
            f"release {spec.name} {spec.version} already exists; a version is never rebuilt "
            f"in place (bump `version`, or --force to replace this local copy)",
            path=ctx.dest,
        )
    ctx.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")
    run_stages(ctx.work, stages(ctx), say, opts.rehash, ctx.records)
    return assemble(ctx)
