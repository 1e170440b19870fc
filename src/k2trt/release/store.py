"""Publish and fetch releases: where they live (`Location`), and what every store must do.

Two kinds of store, one model: immutable *versions* (a published version is never overwritten)
and mutable *channels* (`stable`, `canary`) that name a version.

    oci://HOST[:PORT]/REPO[:TAG]   an OCI registry repository holding one release name: each
                                   version is the tag VERSION ('+' written '_', as Helm does),
                                   each channel another tag on the same manifest (oci.py)
    s3://BUCKET[/PREFIX]           an S3 store root: PREFIX/NAME/VERSION/<files>, release.json
                                   written last; PREFIX/NAME/channels/CHANNEL.json (s3.py);
                                   a release in it is s3://BUCKET/PREFIX/NAME:TAG

`push` sends only what the store lacks and commits the index (OCI manifest, S3 release.json)
last; `pull` writes into a temp directory beside OUT/NAME/VERSION, checks every file against
release.json as it arrives, runs `verify_release` (hashes, signature, weights), and only then
renames into place (publish.py). This module has the shared parts.

>>> parse_location("oci://127.0.0.1:5000/k2/kimi-k2:stable").tag
'stable'
>>> parse_location("s3://releases/k2/kimi-k2:1.0.0").path
'k2/kimi-k2'
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from k2trt.errors import CheckFailed, K2Error
from k2trt.output import Ticker
from k2trt.release.assemble import FORMAT, UNHASHED
from k2trt.release.spec import NAME, SEMVER

T = TypeVar("T")

SCHEMES = ("oci", "s3")
# OCI distribution spec grammar for repository paths and tags
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:]+\](?::\d{1,5})?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# A channel starts with a letter, a version with a digit: the two never collide as tags.
CHANNEL = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
CHUNK = 8 << 20
SMALL = 16 << 20  # cap on an index read whole (manifest, release.json, channel)


@dataclass(frozen=True)
class Location:
    """A store (or a release in one) as the user wrote it."""

    scheme: str  # oci | s3
    host: str  # registry HOST[:PORT], or bucket
    path: str  # repository, or key prefix ("" for a bucket's root)
    tag: str | None  # version or channel
    text: str

    def __str__(self) -> str:
        return self.text

    @property
    def root(self) -> str:
        """The location without its tag."""
        return self.text if self.tag is None else self.text[: -len(self.tag) - 1]


def parse_location(text: str) -> Location:
    """`oci://HOST[:PORT]/REPO[:TAG]` or `s3://BUCKET[/PREFIX][:TAG]`; one-line error otherwise.

    >>> parse_location("ftp://x/y")
    Traceback (most recent call last):
    k2trt.errors.K2Error: ftp://x/y: unknown scheme 'ftp' (expected oci:// or s3://)
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise K2Error(f"{text}: expected oci://HOST[:PORT]/REPO[:TAG] or s3://BUCKET[/PREFIX]")
    if scheme not in SCHEMES:
        raise K2Error(f"{text}: unknown scheme '{scheme}' (expected oci:// or s3://)")
    host, _, path = rest.partition("/")
    path = path.rstrip("/")
    tag = None
    last = path.rpartition("/")[2]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not _TAG.match(tag):
            raise K2Error(f"{text}: '{tag}' is not a valid tag (letters, digits, . _ -)")
    if "@" in path:
        raise K2Error(f"{text}: digest references are not supported; name a version or channel")
    if scheme == "oci":
        if not _HOST.match(host) or not _REPO.match(path):
            raise K2Error(f"{text}: expected oci://HOST[:PORT]/REPO[:TAG] (lowercase repository)")
    elif not _BUCKET.match(host) or ".." in path.split("/"):
        raise K2Error(f"{text}: expected s3://BUCKET[/PREFIX] (a valid bucket name)")
    elif tag is not None and not path:
        raise K2Error(f"{text}: a release in S3 is s3://BUCKET[/PREFIX]/NAME:TAG")
    return Location(scheme, host, path, tag, text)


def version_tag(version: str) -> str:
    """The OCI tag of a version: semver's '+' is not allowed in tags (Helm writes '_' too).

    >>> version_tag("1.0.0+build.5")
    '1.0.0_build.5'
    """
    return version.replace("+", "_")


def safe_path(path: str, where: str) -> str:
    """A release-relative path that stays inside the release (a pulled release.json is input).

    >>> safe_path("../../etc/passwd", "release.json")
    Traceback (most recent call last):
    k2trt.errors.K2Error: release.json: file path '../../etc/passwd' leaves the release
    """
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise K2Error(f"file path {path!r} leaves the release", path=where)
    return path


def tag_version(tag: str) -> str:
    """The version a tag names ('_' never occurs in semver, so it can only stand for '+').

    >>> tag_version("1.0.0_build.5")
    '1.0.0+build.5'
    """
    return tag.replace("_", "+")


def is_channel(tag: str) -> bool:
    return bool(CHANNEL.match(tag))


def check_channel(channel: str) -> str:
    if not CHANNEL.match(channel):
        raise K2Error(
            f"--channel: expected a name starting with a lowercase letter "
            f"(letters, digits, . _ -), got {channel!r}"
        )
    return channel


def parse_release_json(raw: bytes, where: str) -> dict[str, Any]:
    """A release.json read from a store (the checks of verify.load_manifest, on bytes)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CheckFailed(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckFailed(f"{where}: not a k2trt release (expected format {FORMAT})")
    for key in ("id", "name", "version", "files", "target", "versions", "checkpoint"):
        if key not in data:
            raise CheckFailed(f"{where}: lacks '{key}'")
    # they become directory names under OUT: nothing but what a spec allows
    if not NAME.match(str(data["name"])) or not SEMVER.match(str(data["version"])):
        raise CheckFailed(f"{where}: name {data['name']!r} or version {data['version']!r} invalid")
    if not isinstance(data["files"], dict) or set(data["files"]) & set(UNHASHED):
        raise CheckFailed(f"{where}: 'files' must map paths (not release.json/.sig) to hashes")
    return data


@dataclass(frozen=True)
class Entry:
    """One file of a release as a store sees it."""

    path: str  # relative to the release directory
    sha256: str | None  # hex; None where nothing but the signature vouches for it (S3 release.sig)
    bytes: int


@dataclass
class LocalRelease:
    """A release directory about to be pushed."""

    path: Path
    manifest: dict[str, Any]
    raw: bytes  # release.json as it is on disk (pushed byte for byte)
    entries: list[Entry]  # every listed file, then release.sig when present

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def index(self) -> Entry:
        return Entry("release.json", hashlib.sha256(self.raw).hexdigest(), len(self.raw))


@dataclass
class Remote:
    """A release found in a store, before anything is written locally."""

    name: str
    version: str
    id: str
    raw: bytes  # release.json
    manifest: dict[str, Any]
    extras: list[Entry]  # files beside release.json's listing (release.sig)
    where: str  # where it was found, for messages (oci://host/repo:1.0.0, s3://b/p/NAME/1.0.0)
    via: str | None = None  # the channel it was resolved through
    handle: Any = None  # the store's own (OCI: manifest layers by path)

    def entries(self) -> list[Entry]:
        files = self.manifest["files"]
        listed = [
            Entry(safe_path(p, f"{self.where}: release.json"), f["sha256"], f["bytes"])
            for p, f in sorted(files.items())
        ]
        return listed + self.extras


@dataclass(frozen=True)
class Published:
    """A version already in the store."""

    name: str
    version: str
    id: str


@dataclass
class Listing:
    """What `list` shows: versions and channels, with the release id each resolves to."""

    url: str
    versions: list[dict[str, str]] = field(default_factory=list)  # name, version, id
    channels: list[dict[str, str]] = field(default_factory=list)  # name, channel, version, id

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.url, "versions": self.versions, "channels": self.channels}


class Store(Protocol):
    """What push/pull/list/promote need from a store; oci.py and s3.py implement it."""

    url: str
    chunk: int  # bytes per read when uploading

    def published(self, release: LocalRelease) -> Published | None: ...

    def has(self, release: LocalRelease, entry: Entry) -> bool: ...

    def put(self, release: LocalRelease, entry: Entry, chunks: Iterable[bytes]) -> None: ...

    def commit(self, release: LocalRelease) -> str: ...

    def resolve(self, ref: Location) -> Remote: ...

    def open(self, remote: Remote, entry: Entry) -> AbstractContextManager[Iterator[bytes]]: ...

    def listing(self) -> Listing: ...

    def promote(self, name: str, version: str, channel: str) -> dict[str, str]: ...


@dataclass(frozen=True)
class StoreOptions:
    """How to reach a store (none of it changes what is stored)."""

    endpoint_url: str | None = None  # S3-compatible endpoint (else the AWS environment)
    plain_http: bool = False  # OCI over http (loopback registries always are)
    multipart_threshold: int = 64 << 20  # S3: files above this go in parts
    part_size: int = 64 << 20  # bytes per upload request: an S3 part, an OCI PATCH
    timeout: float = 60.0  # seconds per request (connect and each read)
    retry: RetryPolicy | None = None  # default: RetryPolicy.from_env()


def open_store(location: Location, options: StoreOptions) -> Store:
    """The store a location names (clients imported only when used)."""
    if location.scheme == "oci":
        from k2trt.release.oci import OciStore

        return OciStore(location, options)
    from k2trt.release.s3 import S3Store

    return S3Store(location, options)


# -- retries -------------------------------------------------------------------------------


class Transient(Exception):
    """A failure worth another try (connection refused or reset, timeout, 5xx, 429); its
    message is the one line shown when the tries run out."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with jittered exponential backoff.

    >>> RetryPolicy(attempts=4, backoff=0.5, cap=8.0).delays()
    [0.5, 1.0, 2.0]
    """

    attempts: int = 5
    backoff: float = 0.5  # first delay, seconds; doubles up to `cap`
    cap: float = 8.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """$K2TRT_STORE_RETRIES (attempts) and $K2TRT_STORE_BACKOFF (first delay, seconds)."""
        try:
            attempts = int(os.environ.get("K2TRT_STORE_RETRIES", cls.attempts))
            backoff = float(os.environ.get("K2TRT_STORE_BACKOFF", cls.backoff))
        except ValueError as exc:
            raise K2Error(f"K2TRT_STORE_RETRIES/K2TRT_STORE_BACKOFF: {exc}") from exc
        return cls(max(1, attempts), max(0.0, backoff))

    def delays(self) -> list[float]:
        return [min(self.cap, self.backoff * 2**n) for n in range(self.attempts - 1)]


def retrying(call: Callable[[], T], policy: RetryPolicy) -> T:
    """`call()`, again after each Transient failure while attempts remain; then one line."""
    for delay in policy.delays():
        try:
            return call()
        except Transient:
            # jitter: many clients retrying one registry should not do so in lockstep
            time.sleep(delay * random.uniform(0.5, 1.0))
    try:
        return call()
    except Transient as exc:
        raise K2Error(f"{exc} (gave up after {policy.attempts} attempt(s))") from exc


# -- hashing while transferring ------------------------------------------------------------


def read_checked(path: Path, entry: Entry, chunk: int, where: str) -> Iterator[bytes]:
    """The file in chunks; after the last, CheckFailed when it is not what release.json says
    (so an upload is never completed with content the release does not vouch for)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
            yield block
    if entry.sha256 is not None and (size, digest.hexdigest()) != (entry.bytes, entry.sha256):
        raise CheckFailed(
            f"{path}: changed while pushing ({size:,} bytes, sha256 {digest.hexdigest()[:16]}..., "
            f"release.json says {entry.bytes:,} bytes, {entry.sha256[:16]}...); "
            f"nothing committed to {where}"
        )


def receive(chunks: Iterable[bytes], dest: Path, entry: Entry, where: str) -> None:
    """Write a downloaded file, hashing as it arrives; CheckFailed naming it when it differs
    from release.json (a tampered or truncated copy in the store)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with open(dest, "wb") as fh:
        for block in chunks:
            size += len(block)
            if size > entry.bytes:  # never write more than was promised
                break
            digest.update(block)
            fh.write(block)
    if size != entry.bytes:
        raise CheckFailed(
            f"{where}: {entry.path}: {'more than' if size > entry.bytes else f'{size:,}'} "
            f"bytes in the store, release.json says {entry.bytes:,} (truncated or replaced)"
        )
    got = digest.hexdigest()
    if entry.sha256 is not None and got != entry.sha256:
        raise CheckFailed(
            f"{where}: {entry.path}: sha256 {got[:16]}... in the store, release.json says "
            f"{entry.sha256[:16]}... (tampered or corrupt)"
        )


class Counted:
    """A ticker for one file's transfer that can take its bytes back when a try fails."""

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker
        self.sent = 0

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for block in chunks:
            self.sent += len(block)
            self.ticker.advance(len(block))
            yield block

    def rewind(self) -> None:
        self.ticker.advance(-self.sent)
        self.sent = 0
