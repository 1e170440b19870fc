"""`k2trt release build|verify|keygen|ci`: spec-driven, reproducible, signed releases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from k2trt.output import OUTPUT

app = typer.Typer(
    help="Releases: build a verified, signed release from release.yaml; verify one; CI files.",
    no_args_is_help=True,
)
EXIT_FINDINGS = 1


@app.command("build")
def build(
    spec: Path = typer.Argument(..., help="The release spec (release.yaml)."),
    out: Path = typer.Argument(
        ..., help="Releases directory: the release lands in OUT/NAME/VERSION."
    ),
    workdir: Path = typer.Option(
        None,
        "--workdir",
        help="Where the stages work (default OUT/.work/NAME/VERSION); kept "
        "after the build: it holds the prepared checkpoint, and a re-run resumes from it.",
    ),
    sign_key: Path = typer.Option(
        None, "--sign-key", help="EC private key (PEM) to sign with (model-signing, offline)."
    ),
    include_weights: bool = typer.Option(
        False,
        "--include-weights",
        help="Copy the prepared weights into the release "
        "(small models and slices); by default they are referenced by sha256.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing local release of this version."
    ),
    rehash: bool = typer.Option(
        False,
        "--rehash",
        help="Re-read every finished stage's outputs (default: size + mtime, "
        "re-read when the mtime moved).",
    ),
    workers: int = typer.Option(2, "--workers", help="Parallel hashing/conversion workers."),
) -> None:
    """Build (or resume) a release: inspect -> convert -> verify -> build -> package -> gates.

    Each stage leaves a record; a killed build resumes at the first unfinished stage, and a
    changed input re-runs from the first stage it affects. The release (release.json with
    every file's sha256, RELEASE_NOTES.md, the engine options, the Triton repository, gate
    reports) is written aside and renamed into place only when every gate passed. Exit 0
    released, 1 a check failed (gate, finding, hash), 2 bad input."""
    from k2trt.release.pipeline import ReleaseOptions, build_release

    opts = ReleaseOptions(workdir, include_weights, sign_key, force, rehash, workers)
    release = build_release(spec, out, opts, say=OUTPUT.note, progress=OUTPUT.progress)
    OUTPUT.result({"path": str(release.path), **release.manifest}, lambda _: _summary(release))


def _summary(release: Any) -> str:
    m = release.manifest
    t = m["target"]
    gates = ", ".join(f"{name} {g['status']}" for name, g in sorted(m["gates"].items()))
    signed = "signed" if (release.path / "release.sig").exists() else "not signed"
    return "\n".join(
        [
            f"released {m['name']} {m['version']} at {release.path}",
            f"  id          {m['id']}",
            f"  target      {t['gpu']} x {t['gpus']} ({t['nodes']} node(s)): {t['layout']}, "
            f"world size {t['world_size']}",
            f"  checkpoint  {m['checkpoint']['files']} files pinned by sha256 "
            f"({'included' if m['checkpoint']['included'] else 'referenced'}), served from "
            f"{m['checkpoint']['serve_path']}",
            f"  versions    k2trt {m['versions']['k2trt']}, TensorRT-LLM "
            f"{m['versions']['tensorrt_llm']} in {m['versions']['container']}",
            f"  gates       {gates or 'none declared'}",
            f"  files       {len(m['files'])} + release.json, {signed}",
        ]
    )


@app.command("verify")
def verify(
    release: Path = typer.Argument(..., help="A release directory (OUT/NAME/VERSION)."),
    weights: Path = typer.Option(
        None, "--weights", help="A copy of the prepared checkpoint to check against the release."
    ),
    public_key: Path = typer.Option(None, "--public-key", help="Public key (PEM) of the signer."),
    gpus: str = typer.Option(
        None, "--gpus", help="This machine's GPUs, e.g. H200x16 (used when nvidia-smi is absent)."
    ),
    trtllm_version: str = typer.Option(
        None,
        "--trtllm-version",
        help="TensorRT-LLM version here (used when tensorrt_llm is not installed).",
    ),
) -> None:
    """Check a release: every file's sha256, the signature, the weights, and whether it runs
    here (GPU SKU and count, TensorRT-LLM version). One line per problem; exit 0 ok,
    1 findings, 2 unreadable input."""
    from k2trt.release.verify import verify_release

    result = verify_release(
        release, weights=weights, public_key=public_key, gpus=gpus, trtllm_version=trtllm_version
    )
    data = {
        "release": result.release,
        "id": result.id,
        "ok": result.ok,
        "checked": result.checked,
        "findings": result.findings,
        "compatibility": result.compatibility,
    }
    OUTPUT.result(data, _verify_text)
    if not result.ok:
        if not OUTPUT.human:
            for line in result.findings:
                OUTPUT.error(line)
        raise typer.Exit(EXIT_FINDINGS)


def _verify_text(data: dict[str, Any]) -> str:
    head = "ok" if data["ok"] else f"{len(data['findings'])} finding(s)"
    lines = [f"{data['release']} ({data['id']}): {head}"]
    lines += [f"  checked        {c}" for c in data["checked"]]
    lines.append(f"  compatibility  {data['compatibility']}")
    lines += [f"  {f}" for f in data["findings"]]
    return "\n".join(lines)


@app.command("keygen")
def keygen(
    out: Path = typer.Argument(..., help="Directory for release-key.pem and release-key.pub.pem."),
    force: bool = typer.Option(False, "--force", help="Replace existing keys."),
) -> None:
    """A new signing key pair (NIST P-256, PEM) for `release build --sign-key`."""
    from k2trt.release.sign import keygen as make_keys

    private, public = make_keys(out, force=force)
    OUTPUT.result(
        {"private_key": str(private), "public_key": str(public)},
        lambda d: f"wrote {d['private_key']} (keep it secret) and {d['public_key']}",
    )


@app.command("ci")
def ci(
    spec: str = typer.Argument(..., help="The release spec, as a path relative to the repo root."),
    provider: str = typer.Option("github", "--provider", help="CI system (github)."),
    out: Path = typer.Option(
        Path("."), "--out", help="Repository root to write into (.github/workflows/...)."
    ),
    runner_label: list[str] = typer.Option(
        None,
        "--runner-label",
        help="Self-hosted GPU runner label (repeat; default "
        "self-hosted, linux, x64, gpu and the spec's GPU).",
    ),
    publish_to: str = typer.Option(
        None, "--publish-to", help="Where the release workflow pushes (oci://... or s3://...)."
    ),
    workdir: str = typer.Option(None, "--workdir", help="`release build --workdir` on the runner."),
    force: bool = typer.Option(False, "--force", help="Replace existing workflow files."),
) -> None:
    """Write CI workflows for a spec: a CPU workflow (tests, then a release of a synthetic
    checkpoint, uploaded as an artifact) and a release workflow (tag or manual; the serving
    container pinned by digest on a self-hosted GPU runner; build with gates, keyless
    signing, verify, then publish/promote/deploy when asked)."""
    from dataclasses import replace

    from k2trt.release.ci import CiOptions, write_workflows
    from k2trt.release.spec import ReleaseSpec

    options = CiOptions()
    if runner_label:
        options = replace(options, runner_labels=tuple(runner_label))
    if publish_to:
        options = replace(options, publish_to=publish_to)
    if workdir:
        options = replace(options, workdir=workdir)
    written = write_workflows(
        ReleaseSpec.load(Path(spec)), spec, out, provider=provider, options=options, force=force
    )
    OUTPUT.result(
        {"written": [str(p) for p in written]},
        lambda d: "\n".join(f"wrote {p}" for p in d["written"]),
    )


def _register_more() -> None:
    # publishing and rollout live in their own modules; they attach to this group
    from k2trt.cli import release_deploy, release_publish

    release_publish.register(app)
    release_deploy.register(app)


_register_more()
