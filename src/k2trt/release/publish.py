"""`k2trt release push|pull|list|promote`: one flow over any Store (store.py, oci.py, s3.py).

push: refuse a version the store already holds with another release id (the same id is a
no-op), send only the files the store lacks (each hashed as it is read, so nothing the
release does not vouch for is completed), then commit the index last.
pull: resolve the version or channel, write into a temp directory beside OUT/NAME/VERSION,
check each file against release.json as it arrives, verify hashes + signature (+ a local
copy of the weights), and only then rename into place; on any failure nothing is at OUT.

>>> push_release(Path("releases/kimi-k2/1.0.0"), "oci://registry:5000/k2/kimi-k2")  # doctest: +SKIP
PushResult(where='oci://registry:5000/k2/kimi-k2:1.0.0@sha256:...', uploaded=51, ...)
>>> pull_release("oci://registry:5000/k2/kimi-k2:stable", Path("releases"))  # doctest: +SKIP
PullResult(path=PosixPath('releases/kimi-k2/1.0.0'), via='stable', ...)
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from k2trt.checkpoint.manifest import sha256_file
from k2trt.errors import CheckFailed, K2Error
from k2trt.fsutil import atomic_dir
from k2trt.output import Ticker
from k2trt.release.assemble import RELEASE_JSON, SIGNATURE, release_id
from k2trt.release.pipeline import Progress, no_progress
from k2trt.release.store import (
    Counted,
    Entry,
    Listing,
    LocalRelease,
    Remote,
    RetryPolicy,
    Store,
    StoreOptions,
    check_channel,
    open_store,
    parse_location,
    read_checked,
    receive,
    retrying,
    safe_path,
    version_tag,
)
from k2trt.release.verify import check_files, check_weights, load_manifest


@dataclass
class PushResult:
    where: str  # the published version, e.g. oci://host/repo:1.0.0@sha256:...
    name: str
    version: str
    id: str
    uploaded: int  # files sent
    skipped: int  # files the store already had
    bytes: int  # bytes sent
    already: bool  # the store already held this release: nothing was sent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PullResult:
    path: str
    source: str
    name: str
    version: str
    id: str
    via: str | None  # the channel resolved, if one was named
    files: int
    bytes: int
    checked: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _policy(options: StoreOptions) -> RetryPolicy:
    return options.retry or RetryPolicy.from_env()


def load_local(release: Path) -> LocalRelease:
    """A release directory ready to push: its manifest, and every file present at its size
    (hashes are checked while the files are read for sending)."""
    manifest = load_manifest(release)
    if release_id(manifest) != manifest["id"]:
        raise CheckFailed("id does not match its content: the manifest was edited", path=release)
    entries = []
    for name, want in sorted(manifest["files"].items()):
        path = release / safe_path(name, str(release / RELEASE_JSON))
        if not path.is_file() or path.stat().st_size != want["bytes"]:
            found = f"{path.stat().st_size:,} bytes" if path.is_file() else "missing"
            raise CheckFailed(
                f"{path}: {found}, release.json says {want['bytes']:,} bytes; nothing pushed"
            )
        entries.append(Entry(name, want["sha256"], want["bytes"]))
    if (sig := release / SIGNATURE).is_file():
        hashed = sha256_file(sig)
        entries.append(Entry(SIGNATURE, hashed.sha256, hashed.bytes))
    return LocalRelease(release, manifest, (release / RELEASE_JSON).read_bytes(), entries)


def push_release(
    release: Path,
    dest: str,
    options: StoreOptions = StoreOptions(),
    *,
    public_key: Path | None = None,
    progress: Progress = no_progress,
) -> PushResult:
    """Publish a release directory; see the module docstring."""
    location = parse_location(dest)
    local = load_local(release)
    if location.tag is not None and location.tag != version_tag(local.version):
        raise K2Error(
            f"{dest}: a push publishes the release's version ({version_tag(local.version)}); "
            f"move a channel with `k2trt release promote`"
        )
    if public_key is not None:
        from k2trt.release.sign import verify_signature

        if findings := verify_signature(release, public_key):
            raise CheckFailed(f"{findings[0]}; nothing pushed")
    store = open_store(location, options)
    policy = _policy(options)
    existing = retrying(functools.partial(store.published, local), policy)
    if existing is not None:
        return _already(store, local, existing.id)
    has = functools.partial(store.has, local)
    todo = [e for e in local.entries if not retrying(functools.partial(has, e), policy)]
    sent = sum(e.bytes for e in todo)
    with progress(f"push {store.url}", sent) as ticker:
        for entry in todo:
            _upload(store, local, entry, ticker, policy)
    where = retrying(functools.partial(store.commit, local), policy)
    skipped = len(local.entries) - len(todo)
    return PushResult(where, local.name, local.version, local.id, len(todo), skipped, sent, False)


def _already(store: Store, local: LocalRelease, found: str) -> PushResult:
    if found != local.id:
        raise K2Error(
            f"{store.url}: {local.name} {local.version} is already published as another release "
            f"({found[:19]}..., this one is {local.id[:19]}...); versions are immutable: "
            f"build a new version"
        )
    return PushResult(
        store.url, local.name, local.version, local.id, 0, len(local.entries), 0, True
    )


def _upload(
    store: Store, local: LocalRelease, entry: Entry, ticker: Ticker, policy: RetryPolicy
) -> None:
    counted = Counted(ticker)

    def attempt() -> None:
        counted.rewind()  # a retry sends the file again from its start
        chunks = read_checked(local.path / entry.path, entry, store.chunk, store.url)
        store.put(local, entry, counted.wrap(chunks))

    retrying(attempt, policy)


def pull_release(
    src: str,
    out: Path,
    options: StoreOptions = StoreOptions(),
    *,
    public_key: Path | None = None,
    weights: Path | None = None,
    force: bool = False,
    progress: Progress = no_progress,
) -> PullResult:
    """Fetch a version or channel into OUT/NAME/VERSION; see the module docstring."""
    ref = parse_location(src)
    if ref.tag is None:
        raise K2Error(f"{src}: name a version or a channel, e.g. {src}:1.0.0 or {src}:stable")
    if weights is not None and not weights.is_dir():
        raise K2Error("--weights: not a directory", path=weights)
    store = open_store(ref, options)
    policy = _policy(options)
    remote = retrying(functools.partial(store.resolve, ref), policy)
    entries = remote.entries()
    total = sum(e.bytes for e in entries)
    dest = out / remote.name / remote.version
    made = [p for p in (out, dest.parent) if not p.exists()]
    try:
        with atomic_dir(dest, force=force) as tmp:
            (tmp / RELEASE_JSON).write_bytes(remote.raw)
            with progress(f"pull {remote.where}", total) as ticker:
                for entry in entries:
                    _download(store, remote, entry, tmp / entry.path, ticker, policy)
            checked = _verify(tmp, remote, public_key, weights)
    except BaseException:
        for path in reversed(made):  # no empty OUT/NAME left behind either
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return PullResult(
        str(dest), remote.where, remote.name, remote.version, remote.id, remote.via,
        len(entries), total, checked,
    )  # fmt: skip


def _download(
    store: Store, remote: Remote, entry: Entry, dest: Path, ticker: Ticker, policy: RetryPolicy
) -> None:
    counted = Counted(ticker)

    def attempt() -> None:
        counted.rewind()
        with store.open(remote, entry) as chunks:
            receive(counted.wrap(chunks), dest, entry, remote.where)

    retrying(attempt, policy)


def _verify(tmp: Path, remote: Remote, public_key: Path | None, weights: Path | None) -> list[str]:
    """verify_release's checks but compatibility: pulling onto a machine that will not run the
    release (a CI box, a mirror) is fine."""
    findings = check_files(tmp, remote.manifest)
    checked = [f"{len(remote.manifest['files'])} files by sha256"]
    if public_key is not None:
        from k2trt.release.sign import verify_signature

        findings += verify_signature(tmp, public_key)
        checked.append("signature")
    if weights is not None:
        findings += check_weights(tmp, remote.manifest, weights)
        checked.append(f"weights in {weights}")
    if findings:
        # name the source, not the temp directory that is about to disappear
        first = findings[0].replace(str(tmp), remote.where)
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        raise CheckFailed(f"{first}{more}; nothing written")
    return checked


def list_releases(dest: str, options: StoreOptions = StoreOptions()) -> Listing:
    """Versions and channels in a store (an OCI repository, or an S3 root)."""
    location = parse_location(dest)
    if location.tag is not None:
        raise K2Error(f"{dest}: list takes a store without a tag ({location.root})")
    store = open_store(location, options)
    return retrying(store.listing, _policy(options))


def promote_release(
    dest: str, name: str, version: str, channel: str, options: StoreOptions = StoreOptions()
) -> dict[str, str]:
    """Point CHANNEL at a published VERSION of NAME; a missing version is refused."""
    check_channel(channel)
    location = parse_location(dest)
    if location.tag is not None:
        raise K2Error(f"{dest}: promote takes a store without a tag ({location.root})")
    store = open_store(location, options)
    return retrying(functools.partial(store.promote, name, version, channel), _policy(options))
