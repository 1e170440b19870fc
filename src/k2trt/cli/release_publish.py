"""`k2trt release push|pull|list|promote`: releases in an OCI registry or S3 (issue 11).

A veneer over k2trt.release.publish: flags to StoreOptions, results through OUTPUT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from k2trt.output import OUTPUT

_ENDPOINT_HELP = "S3-compatible endpoint (default: the AWS environment's)."
_PLAIN_HELP = "Talk plain http to a registry that is not on this machine (loopback always is)."


def _options(endpoint_url: str | None, plain_http: bool) -> Any:
    from k2trt.release.store import StoreOptions

    return StoreOptions(endpoint_url=endpoint_url, plain_http=plain_http)


def push(
    release: Path = typer.Argument(..., help="A release directory (OUT/NAME/VERSION)."),
    dest: str = typer.Argument(..., help="oci://HOST[:PORT]/REPO or s3://BUCKET[/PREFIX]."),
    public_key: Path = typer.Option(
        None, "--public-key", help="Check the release's signature with this key (PEM) first."
    ),
    endpoint_url: str = typer.Option(None, "--endpoint-url", help=_ENDPOINT_HELP),
    plain_http: bool = typer.Option(False, "--plain-http", help=_PLAIN_HELP),
) -> None:
    """Publish a release as an immutable version: only what the store lacks is sent, the
    index (OCI manifest / S3 release.json) last. The same release again is a no-op; another
    release under a published version is refused. Exit 0 published, 1 a check failed, 2 bad
    input or an unreachable store."""
    from k2trt.release.publish import push_release

    result = push_release(
        release,
        dest,
        _options(endpoint_url, plain_http),
        public_key=public_key,
        progress=OUTPUT.progress,
    )
    OUTPUT.result(result.to_dict(), _push_text)


def _push_text(d: dict[str, Any]) -> str:
    if d["already"]:
        return f"{d['name']} {d['version']} ({d['id']}) is already in {d['where']}: nothing sent"
    return (
        f"pushed {d['name']} {d['version']} to {d['where']}\n"
        f"  id     {d['id']}\n"
        f"  files  {d['uploaded']} sent ({d['bytes']:,} bytes), "
        f"{d['skipped']} skipped (in the store already, or the same content as another)"
    )


def pull(
    src: str = typer.Argument(
        ..., help="oci://HOST[:PORT]/REPO:TAG or s3://BUCKET[/PREFIX]/NAME:TAG (version/channel)."
    ),
    out: Path = typer.Argument(..., help="Releases directory: lands in OUT/NAME/VERSION."),
    public_key: Path = typer.Option(None, "--public-key", help="Public key (PEM) of the signer."),
    weights: Path = typer.Option(
        None, "--weights", help="A local copy of the prepared checkpoint to verify as well."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT/NAME/VERSION."),
    endpoint_url: str = typer.Option(None, "--endpoint-url", help=_ENDPOINT_HELP),
    plain_http: bool = typer.Option(False, "--plain-http", help=_PLAIN_HELP),
) -> None:
    """Fetch a version (or the version a channel names) and verify it before anything is at
    OUT: every file against release.json as it arrives, then the manifest's id, the signature
    (--public-key) and the weights (--weights). Exit 0 pulled, 1 a check failed (nothing
    written), 2 bad input or an unreachable store."""
    from k2trt.release.publish import pull_release

    result = pull_release(
        src,
        out,
        _options(endpoint_url, plain_http),
        public_key=public_key,
        weights=weights,
        force=force,
        progress=OUTPUT.progress,
    )
    OUTPUT.result(result.to_dict(), _pull_text)


def _pull_text(d: dict[str, Any]) -> str:
    via = f" (channel {d['via']})" if d["via"] else ""
    lines = [
        f"pulled {d['name']} {d['version']}{via} from {d['source']} to {d['path']}",
        f"  id       {d['id']}",
        f"  files    {d['files']} + release.json ({d['bytes']:,} bytes)",
    ]
    return "\n".join(lines + [f"  checked  {c}" for c in d["checked"]])


def list_(
    dest: str = typer.Argument(..., help="oci://HOST[:PORT]/REPO or s3://BUCKET[/PREFIX]."),
    endpoint_url: str = typer.Option(None, "--endpoint-url", help=_ENDPOINT_HELP),
    plain_http: bool = typer.Option(False, "--plain-http", help=_PLAIN_HELP),
) -> None:
    """Versions and channels in a store, with the release id each points at."""
    from k2trt.release.publish import list_releases

    listing = list_releases(dest, _options(endpoint_url, plain_http))
    OUTPUT.result(listing.to_dict(), _list_text)


def _list_text(d: dict[str, Any]) -> str:
    lines = [d["store"]]
    if not d["versions"]:
        lines.append("  no releases")
    lines += [f"  {v['name']} {v['version']}  {v['id']}" for v in d["versions"]]
    lines += [f"  {c['name']} {c['channel']} -> {c['version']}  {c['id']}" for c in d["channels"]]
    return "\n".join(lines)


def promote(
    dest: str = typer.Argument(..., help="oci://HOST[:PORT]/REPO or s3://BUCKET[/PREFIX]."),
    name: str = typer.Argument(..., help="Release name."),
    version: str = typer.Argument(..., help="A published version."),
    channel: str = typer.Option(..., "--channel", help="Channel to point at it, e.g. stable."),
    endpoint_url: str = typer.Option(None, "--endpoint-url", help=_ENDPOINT_HELP),
    plain_http: bool = typer.Option(False, "--plain-http", help=_PLAIN_HELP),
) -> None:
    """Point a channel (a mutable alias) at a published version; a version the store does
    not hold is refused."""
    from k2trt.release.publish import promote_release

    moved = promote_release(dest, name, version, channel, _options(endpoint_url, plain_http))
    OUTPUT.result(moved, _promote_text)


def _promote_text(d: dict[str, str]) -> str:
    was = f" (was {d['previous']})" if d["previous"] else " (new channel)"
    return f"{d['store']}: {d['name']} {d['channel']} -> {d['version']}{was}  {d['id']}"


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `release` group."""
    app.command("push")(push)
    app.command("pull")(pull)
    app.command("list")(list_)
    app.command("promote")(promote)
