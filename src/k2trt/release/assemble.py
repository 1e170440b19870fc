"""The release directory and its manifest, `release.json`.

    NAME/VERSION/
      release.json             id, versions, target, gates, and every file's size + sha256
      release.sig              model-signing signature (with --sign-key)
      RELEASE_NOTES.md         what changed against `previous`
      spec.yaml                the spec, normalised
      stages.json              what each stage found
      checkpoint/              source-manifest.json, prepared-manifest.json (weights by
                               reference); weights/ with --include-weights
      engine/                  llm_api_options.yaml, build.json
      triton/                  model_repository/, launch/, k2trt-package.json (placed for
                               the serving nodes)
      gates/                   one report per gate (+ perf/aiperf.sh, the perf recipe)

Reproducible: nothing hashed holds a wall-clock time or a path of the build machine, so the
same spec and inputs give the same bytes; the one creation time (`created`, not part of the
id) is $SOURCE_DATE_EPOCH when set. The id is the sha256 of the canonical manifest
(release.json without `id` and `created`). Only release.sig differs between two builds
(ECDSA signatures are randomised).
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from k2trt import __version__
from k2trt.chat.toolcalls import PARSER_VERSION
from k2trt.checkpoint.manifest import MANIFEST_NAME, hash_files
from k2trt.errors import K2Error
from k2trt.fsutil import (
    atomic_dir,
    files_under,
    link_or_copy,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from k2trt.release.containers import parse_image, trtllm_version_of
from k2trt.release.stages import digest

if TYPE_CHECKING:
    from k2trt.release.pipeline import Context

FORMAT = "k2trt.release/1"
RELEASE_JSON = "release.json"
NOTES = "RELEASE_NOTES.md"
SIGNATURE = "release.sig"
UNHASHED = (RELEASE_JSON, SIGNATURE)  # release.json lists the others; the signature covers all
SOURCE_MANIFEST = "checkpoint/source-manifest.json"
PREPARED_MANIFEST = "checkpoint/prepared-manifest.json"
WEIGHTS = "checkpoint/weights"
OPTIONS = "engine/llm_api_options.yaml"
BUILD = "engine/build.json"
ENGINE_CONFIGS = frozenset(
    {
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "hf_quant_config.json",
    }
)


@dataclass(frozen=True)
class Release:
    path: Path
    manifest: dict[str, Any]


def trtllm_version(ctx: Context) -> tuple[str, str]:
    """(version, where it came from): the spec's, else what the container is known to ship."""
    given = ctx.spec.package.trtllm_version
    if given:
        return given, "spec"
    known = trtllm_version_of(parse_image(ctx.spec.package.container))
    if known is None:
        raise K2Error(
            f"package.trtllm_version: {ctx.spec.package.container} is not an NVIDIA Triton "
            f"trtllm container k2trt knows; set the TensorRT-LLM version it ships"
        )
    return known, "container"


def assemble(ctx: Context) -> Release:
    """Write the release aside, then rename it into place (signed when a key is given)."""
    with atomic_dir(ctx.dest, force=ctx.opts.force) as tmp:
        write_parts(ctx, tmp)
        body = manifest_body(ctx, tmp)
        write_text_atomic(tmp / NOTES, release_notes(ctx, body, tmp))
        manifest = finish_manifest(body, tmp)
        write_json_atomic(tmp / RELEASE_JSON, manifest)
        if ctx.opts.sign_key is not None:
            from k2trt.release.sign import sign_release

            sign_release(tmp, ctx.opts.sign_key)
    return Release(ctx.dest, manifest)


def write_parts(ctx: Context, tmp: Path) -> None:
    """Everything but the notes and release.json."""
    work = ctx.work
    write_text_atomic(tmp / "spec.yaml", yaml.safe_dump(ctx.spec.to_dict(), sort_keys=True))
    # results only: the records' input digests cover mtimes, which another machine's copy of
    # the same files does not share (content hashes are in the manifests)
    write_json_atomic(tmp / "stages.json", {n: r.result for n, r in ctx.records.items()})
    (tmp / "checkpoint").mkdir()
    shutil.copyfile(work / "source-manifest.json", tmp / SOURCE_MANIFEST)
    prepared = prepared_projection(read_json(ctx.prepared / MANIFEST_NAME), ctx)
    write_json_atomic(tmp / PREPARED_MANIFEST, prepared)
    if ctx.opts.include_weights:
        _link_tree(ctx.prepared, tmp / WEIGHTS)
    (tmp / "engine").mkdir()
    shutil.copyfile(work / "bundle" / "llm_api_options.yaml", tmp / OPTIONS)
    write_json_atomic(
        tmp / BUILD, build_projection(read_json(work / "bundle" / "k2trt-build.json"))
    )
    shutil.copytree(work / "triton", tmp / "triton", ignore=_hidden)
    shutil.copytree(work / "gates", tmp / "gates", ignore=_hidden)


def _hidden(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(".")]


def _link_tree(src: Path, dest: Path) -> None:
    for path in files_under(src):
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(path, target)


def prepared_projection(manifest: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The convert manifest with the source named as the spec names it (not where this
    machine keeps it) and the template's source relative to the checkpoint."""
    out = {**manifest, "source": {**manifest["source"], "path": ctx.spec.checkpoint.path}}
    template = manifest.get("chat_template")
    if isinstance(template, dict) and template.get("source"):
        where = Path(template["source"])
        if where.is_absolute() and where.is_relative_to(ctx.source):
            out["chat_template"] = {**template, "source": where.relative_to(ctx.source).as_posix()}
    return out


def build_projection(record: dict[str, Any]) -> dict[str, Any]:
    """The build record without what only this machine knows: the local path, mtimes, and
    the convert manifest's own hash (it names the source's local path; the release carries
    its projection, checkpoint/prepared-manifest.json, instead)."""
    ckpt = record["checkpoint"]
    files = {
        n: {"bytes": f["bytes"], "sha256": f["sha256"]}
        for n, f in ckpt["files"].items()
        if n != MANIFEST_NAME
    }
    return {
        **record,
        "checkpoint": {
            "serve_path": ckpt.get("serve_path"),
            "model_type": ckpt["model_type"],
            "files": files,
        },
    }


def manifest_body(ctx: Context, tmp: Path) -> dict[str, Any]:
    """release.json without files, id and creation time."""
    r = {name: rec.result for name, rec in ctx.records.items()}
    prepared = read_json(tmp / PREPARED_MANIFEST)
    ckpt_files = {n: f["sha256"] for n, f in sorted(prepared["files"].items())}
    options_sha = r["build"]["options_sha256"]
    package = read_json(tmp / "triton" / "k2trt-package.json")
    container = parse_image(ctx.spec.package.container)
    trtllm, trtllm_source = trtllm_version(ctx)
    build = read_json(tmp / BUILD)
    return {
        "format": FORMAT,
        "name": ctx.spec.name,
        "version": ctx.spec.version,
        "source": _source(ctx, r["inspect"]),
        "checkpoint": {
            "manifest": PREPARED_MANIFEST,
            "files": len(ckpt_files),
            "bytes": sum(f["bytes"] for f in prepared["files"].values()),
            "sha256": digest(ckpt_files),
            "serve_path": ctx.spec.checkpoint_path(),
            "included": WEIGHTS if ctx.opts.include_weights else None,
            "kind": r["convert"]["kind"],
        },
        "engine": {
            **engine_part(ckpt_files, options_sha),
            "options": OPTIONS,
            "option_schema": build["options"]["schema"],
        },
        "serving": {
            "models": package["models"],
            "chat_template": r["convert"]["chat_template"],
            "model_files": package["model_files"],
            "parser": PARSER_VERSION,
            "k2trt": __version__,
        },
        "versions": {
            "k2trt": __version__,
            "python": platform.python_version(),
            "container": container.text,
            "container_digest": container.digest,
            "tensorrt_llm": trtllm,
            "tensorrt_llm_from": trtllm_source,
            "option_schema_commit": build["options"]["schema"]["commit"],
        },
        "target": {
            k: r["build"][k]
            for k in ("gpu", "gpus", "gpus_per_node", "nodes", "layout", "world_size")
        },
        "gates": r["gates"]["gates"],
        "previous": None,
    }


def engine_files(files: dict[str, str]) -> dict[str, str]:
    """The checkpoint files TensorRT-LLM builds its runtime from: weights, index, configs.
    Tokenizer and chat template files are the serving models' part (they change without a
    reload of the engine).

    >>> sorted(engine_files({"a.safetensors": "1", "config.json": "2", "tiktoken.model": "3"}))
    ['a.safetensors', 'config.json']
    """
    return {n: h for n, h in files.items() if n.endswith(".safetensors") or n in ENGINE_CONFIGS}


def engine_id(files: dict[str, str], options_sha256: str) -> str:
    """What must be equal for a release to roll onto a running engine in place."""
    return digest({"weights": digest(engine_files(files)), "options": options_sha256})


def engine_part(files: dict[str, str], options_sha256: str) -> dict[str, str]:
    """release.json's engine figures (the packaged configs record the same ones)."""
    return {
        "id": engine_id(files, options_sha256),
        "weights_sha256": digest(engine_files(files)),
        "options_sha256": options_sha256,
    }


def _source(ctx: Context, inspected: dict[str, Any]) -> dict[str, Any]:
    hf = ctx.spec.checkpoint.hf
    return {
        "path": ctx.spec.checkpoint.path,
        "hf": None if hf is None else {"repo": hf.repo, "revision": hf.revision},
        "manifest": SOURCE_MANIFEST,
        "files": inspected["files"],
        "bytes": inspected["bytes"],
        "architecture": inspected["architecture"],
        "parameters": inspected["parameters"],
    }


def release_notes(ctx: Context, body: dict[str, Any], parts: Path) -> str:
    """RELEASE_NOTES.md against `previous` (and records which release that was)."""
    from k2trt.release.notes import render_notes

    prev_dir = ctx.previous()
    prev = None
    if prev_dir is not None:
        prev = read_json(prev_dir / RELEASE_JSON, "previous release manifest")
        body["previous"] = {"version": prev["version"], "id": prev["id"]}
    return render_notes(body, prev, parts, prev_dir)


def finish_manifest(body: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The body plus every file's size and sha256, the id over all of it, and the time."""
    paths = [p for p in files_under(tmp) if p.relative_to(tmp).as_posix() not in UNHASHED]
    files = {
        p.relative_to(tmp).as_posix(): {"bytes": h.bytes, "sha256": h.sha256}
        for p, h in zip(paths, hash_files(paths), strict=True)
    }
    manifest = {**body, "files": dict(sorted(files.items()))}
    return {**manifest, "id": release_id(manifest), "created": created()}


def release_id(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical manifest: everything but `id` and `created`."""
    return "sha256:" + digest({k: v for k, v in manifest.items() if k not in ("id", "created")})


def created() -> str:
    """UTC time of the build, or of $SOURCE_DATE_EPOCH (reproducible builds' convention)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        seconds = int(epoch) if epoch else int(time.time())
    except ValueError as exc:
        raise K2Error(f"SOURCE_DATE_EPOCH: expected seconds since 1970, got {epoch!r}") from exc
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
