"""Releases in S3 (or an S3-compatible store: `--endpoint-url`), through boto3.

    PREFIX/NAME/VERSION/<path>          every file of the release, then release.sig
    PREFIX/NAME/VERSION/release.json    written last: a version exists once this does
    PREFIX/NAME/channels/CHANNEL.json   {"version", "release"} (k2trt.channel/1)

Every object is written with `If-None-Match: *` (S3 conditional writes), so a published
version is never overwritten, not even by a racing push; channel objects are replaced with
`If-Match: <etag>`, so two promotions never silently undo each other. Each object carries its
SHA-256 (`ChecksumSHA256`, which S3 verifies on receipt; multipart: per part) and the hex
sha256 as metadata `sha256`, which a resumed push compares to skip what is already there.
Credentials and region come from the usual AWS environment (variables, profiles, instance
roles); none at all is a one-line error before any request.

>>> store = S3Store(parse_location("s3://releases/k2"), StoreOptions())  # doctest: +SKIP
>>> store.listing().channels  # doctest: +SKIP
[{'name': 'kimi-k2', 'channel': 'stable', 'version': '1.0.0', 'id': 'sha256:...'}]
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from k2trt.errors import CheckFailed, K2Error
from k2trt.release.assemble import SIGNATURE
from k2trt.release.store import (
    SMALL,
    Entry,
    Listing,
    LocalRelease,
    Location,
    Published,
    Remote,
    StoreOptions,
    Transient,
    is_channel,
    parse_release_json,
    tag_version,
)

T = TypeVar("T")
CHANNELS = "channels"
CHANNEL_FORMAT = "k2trt.channel/1"
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "503"}
_PART = re.compile(r"-\d+$")


def b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class S3Store:
    """The Store protocol (store.py) over one bucket and prefix."""

    def __init__(self, location: Location, options: StoreOptions) -> None:
        self.bucket = location.host
        self.prefix = location.path
        self.name: str | None = None
        if location.tag is not None:  # s3://BUCKET/PREFIX/NAME:TAG names a release
            self.prefix, _, self.name = location.path.rpartition("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.options = options
        self.chunk = options.part_size
        session = boto3.session.Session()
        if session.get_credentials() is None:
            raise K2Error(
                f"{self.url}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance role)"
            )
        config = botocore.config.Config(
            retries={"total_max_attempts": 1},  # store.retrying retries, bounded, one policy
            connect_timeout=options.timeout,
            read_timeout=options.timeout,
        )
        self.client = session.client(
            "s3",
            endpoint_url=options.endpoint_url,
            region_name=session.region_name or "us-east-1",
            config=config,
        )

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _call(self, what: str, call: Callable[..., T], **kwargs: Any) -> T:
        """One S3 call; Transient for what another try may fix, K2Error for the rest."""
        try:
            return call(Bucket=self.bucket, **kwargs)
        except botocore.exceptions.NoCredentialsError as exc:
            raise K2Error(f"{self.url}: no AWS credentials ({exc})") from exc
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectTimeoutError,
        ) as exc:
            raise Transient(f"{self.url}: {what}: cannot reach the store ({exc})") from exc
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            text = f"{self.url}: {what}: {code} {error.get('Message', '')}".rstrip()
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                raise Transient(text) from exc
            raise _Refused(text, code, status) from exc

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._call(f"head {key}", self.client.head_object, Key=key)
            return head
        except _Refused as exc:
            if exc.status == 404:
                return None
            raise

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """(body, etag) of a small object, or None when there is none."""
        try:
            got = self._call(f"get {key}", self.client.get_object, Key=key)
        except _Refused as exc:
            if exc.code in ("NoSuchKey", "404"):
                return None
            raise
        if got["ContentLength"] > SMALL:
            got["Body"].close()
            raise K2Error(f"s3://{self.bucket}/{key}: more than {SMALL:,} bytes")
        return got["Body"].read(), got["ETag"]

    # -- push -------------------------------------------------------------------------------

    def _release_key(self, release: LocalRelease, path: str) -> str:
        if self.name is not None and self.name != release.name:
            raise K2Error(f"{self.url}/{self.name}: the release is named {release.name}")
        return self._key(release.name, release.version, path)

    def published(self, release: LocalRelease) -> Published | None:
        found = self._get(self._release_key(release, "release.json"))
        if found is None:
            return None
        data = parse_release_json(found[0], f"{self.url}/{release.name}/{release.version}")
        return Published(data["name"], data["version"], data["id"])

    def has(self, release: LocalRelease, entry: Entry) -> bool:
        key = self._release_key(release, entry.path)
        head = self._head(key)
        if head is None:
            return False
        if head.get("Metadata", {}).get("sha256") != entry.sha256:
            # a half-finished push of another build of this version: never overwritten
            folder = self._key(release.name, release.version)
            raise K2Error(
                f"s3://{self.bucket}/{key}: exists with other content (an unfinished push of "
                f"another build?); delete s3://{self.bucket}/{folder}/ to push this one"
            )
        return True

    def put(self, release: LocalRelease, entry: Entry, chunks: Iterable[bytes]) -> None:
        key = self._release_key(release, entry.path)
        assert entry.sha256 is not None
        if entry.bytes <= self.options.multipart_threshold:
            self._put_object(key, b"".join(chunks), entry.sha256)
        else:
            self._multipart(key, chunks, entry.sha256)

    def _put_object(self, key: str, body: bytes, sha256: str, if_match: str | None = None) -> None:
        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        sent = b64(sha256)
        done = self._call(
            f"put {key}",
            self.client.put_object,
            Key=key,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=sent,
            Metadata={"sha256": sha256},
            **condition,
        )
        if done.get("ChecksumSHA256", sent) != sent:
            raise CheckFailed(f"s3://{self.bucket}/{key}: the store computed another SHA-256")

    def _multipart(self, key: str, chunks: Iterable[bytes], sha256: str) -> None:
        what = f"multipart {key}"
        upload = self._call(
            what,
            self.client.create_multipart_upload,
            Key=key,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": sha256},
        )["UploadId"]
        try:
            parts = [self._part(key, upload, n, block) for n, block in enumerate(chunks, 1)]
            done = self._call(
                what,
                self.client.complete_multipart_upload,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            # an incomplete upload is billed storage that nothing lists: abort it
            self._call(what, self.client.abort_multipart_upload, Key=key, UploadId=upload)
            raise
        digests = b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts)
        composite = base64.b64encode(hashlib.sha256(digests).digest()).decode()
        if _PART.sub("", done.get("ChecksumSHA256", composite)) != composite:
            raise CheckFailed(f"s3://{self.bucket}/{key}: the store computed another SHA-256")

    def _part(self, key: str, upload: str, number: int, block: bytes) -> dict[str, Any]:
        sent = b64(hashlib.sha256(block).hexdigest())
        done = self._call(
            f"part {number} of {key}",
            self.client.upload_part,
            Key=key,
            UploadId=upload,
            PartNumber=number,
            Body=block,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=sent,
        )
        if done.get("ChecksumSHA256", sent) != sent:
            raise CheckFailed(f"s3://{self.bucket}/{key}: part {number} arrived changed")
        return {"PartNumber": number, "ETag": done["ETag"], "ChecksumSHA256": sent}

    def commit(self, release: LocalRelease) -> str:
        key = self._release_key(release, "release.json")
        try:
            self._put_object(key, release.raw, release.index.sha256 or "")
        except _Refused as exc:
            if exc.code != "PreconditionFailed":
                raise
            raise K2Error(f"s3://{self.bucket}/{key}: published meanwhile by another push") from exc
        return f"{self.url}/{release.name}:{release.version}"

    # -- pull -------------------------------------------------------------------------------

    def resolve(self, ref: Location) -> Remote:
        assert ref.tag is not None and self.name is not None
        where, version, via = f"{self.url}/{self.name}", tag_version(ref.tag), None
        if is_channel(ref.tag):
            version, via = self._channel(self.name, ref.tag)["version"], ref.tag
        found = self._get(self._key(self.name, version, "release.json"))
        if found is None:
            raise K2Error(f"{ref}: no version or channel '{ref.tag}' in {where}")
        at = f"{where}/{version}"
        manifest = parse_release_json(found[0], f"{at}: release.json")
        if (manifest["name"], manifest["version"]) != (self.name, version):
            raise CheckFailed(
                f"{at}: release.json is {manifest['name']} {manifest['version']}, "
                f"stored as {self.name} {version}"
            )
        extras = []
        if (sig := self._head(self._key(self.name, version, SIGNATURE))) is not None:
            extras.append(Entry(SIGNATURE, None, int(sig["ContentLength"])))
        return Remote(self.name, version, manifest["id"], found[0], manifest, extras, at, via)

    def _channel(self, name: str, channel: str) -> dict[str, Any]:
        found = self._get(self._key(name, CHANNELS, f"{channel}.json"))
        if found is None:
            raise K2Error(f"{self.url}/{name}: no version or channel '{channel}'")
        return _channel_data(found[0], f"{self.url}/{name}/{CHANNELS}/{channel}.json")

    @contextmanager
    def open(self, remote: Remote, entry: Entry) -> Iterator[Iterator[bytes]]:
        key = self._key(remote.name, remote.version, entry.path)
        got = self._call(f"get {key}", self.client.get_object, Key=key)
        body = got["Body"]
        try:
            yield self._stream(body, key)
        finally:
            body.close()

    def _stream(self, body: Any, key: str) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(self.chunk)
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise Transient(f"{self.url}: get {key}: {exc}") from exc

    # -- list, promote ----------------------------------------------------------------------

    def _children(self, prefix: str, files: bool = False) -> list[str]:
        """The next path components below a prefix: 'directories', or with `files` objects."""
        names, token = [], None
        while True:
            more: dict[str, str] = {"ContinuationToken": token} if token else {}
            page = self._call(
                f"list {prefix}",
                self.client.list_objects_v2,
                Prefix=prefix,
                Delimiter="/",
                **more,
            )
            if files:
                names += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
            else:
                names += [p["Prefix"][len(prefix) : -1] for p in page.get("CommonPrefixes", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return names

    def listing(self) -> Listing:
        listing = Listing(self.url)
        base = f"{self.prefix}/" if self.prefix else ""
        for name in sorted(self._children(base)):
            for version in sorted(self._children(f"{base}{name}/")):
                found = self._get(self._key(name, version, "release.json"))
                if version == CHANNELS or found is None:
                    continue  # no release.json: an unfinished push, not a release
                try:
                    data = parse_release_json(found[0], f"{self.url}/{name}/{version}")
                except K2Error:
                    continue  # not a k2trt release (another tool's files share the prefix)
                listing.versions.append({"name": name, "version": version, "id": data["id"]})
            for item in sorted(self._children(f"{base}{name}/{CHANNELS}/", files=True)):
                data = self._channel(name, item.removesuffix(".json"))
                row = {"name": name, "channel": data["channel"], "version": data["version"]}
                listing.channels.append({**row, "id": data["release"]})
        return listing

    def promote(self, name: str, version: str, channel: str) -> dict[str, str]:
        found = self._get(self._key(name, version, "release.json"))
        if found is None:
            raise K2Error(f"{self.url}: no version {version} of {name} to promote")
        release = parse_release_json(found[0], f"{self.url}/{name}/{version}")
        key = self._key(name, CHANNELS, f"{channel}.json")
        before = self._get(key)
        previous = _channel_data(before[0], key)["version"] if before else ""
        body = json.dumps(
            {"format": CHANNEL_FORMAT, "name": name, "channel": channel,
             "version": version, "release": release["id"]},
            indent=2, sort_keys=True,
        ).encode() + b"\n"  # fmt: skip
        try:
            self._put_object(
                key, body, hashlib.sha256(body).hexdigest(), before[1] if before else None
            )
        except _Refused as exc:
            if exc.code != "PreconditionFailed":
                raise
            raise K2Error(
                f"s3://{self.bucket}/{key}: moved by someone else meanwhile; retry"
            ) from exc
        return {"store": self.url, "name": name, "channel": channel, "version": version,
                "id": release["id"], "previous": previous}  # fmt: skip


class _Refused(K2Error):
    """A definite answer from S3 (4xx): not retried."""

    def __init__(self, message: str, code: str, status: int) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def _channel_data(raw: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
        if data.get("format") != CHANNEL_FORMAT or not isinstance(data.get("version"), str):
            raise ValueError(f"expected {CHANNEL_FORMAT} with a version")
    except (ValueError, AttributeError) as exc:
        raise K2Error(f"{where}: not a k2trt channel ({exc})") from exc
    result: dict[str, Any] = data
    return result
