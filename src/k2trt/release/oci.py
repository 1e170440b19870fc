"""Releases in an OCI registry, as CNCF ModelPack artifacts (modelpack.py), through `oras`.

A repository holds one release name: each version is the tag VERSION, each channel another
tag on a version's manifest. Blobs are content-addressed, so a resumed push skips what the
registry has (HEAD by digest) and the registry itself checks every digest on upload.

oras (PyPI `oras`, the ORAS project's Python client) gives the registry session: docker/oras
login credentials and token auth, repository URLs, upload locations. Its `do_request` retries
five more times, sleeping 2 + 3**n seconds, and sets no timeout; here each request has a
timeout and the retries are store.retrying's (bounded, the store named in the one line).
Distribution has no conditional tag write: the "version already exists" check is a read just
before the manifest is written, not atomic (S3's conditional put is).

>>> where = parse_location("oci://127.0.0.1:5000/k2/kimi-k2")  # doctest: +SKIP
>>> OciStore(where, StoreOptions()).listing().versions  # doctest: +SKIP
[{'name': 'kimi-k2', 'version': '1.0.0', 'id': 'sha256:...'}]
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import oras.auth
import oras.provider
import oras.utils
import requests

from k2trt.errors import CheckFailed, K2Error
from k2trt.release.assemble import SIGNATURE
from k2trt.release.modelpack import (
    OCI_MANIFEST,
    Found,
    build_artifact,
    is_version_tag,
    read_artifact,
)
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
    parse_release_json,
    version_tag,
)

_ORAS_DO_REQUEST = oras.provider.Registry.do_request.__wrapped__  # without oras's retry loop
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


class _TimeoutSession(requests.Session):
    """requests has no session-wide timeout; without one a silent registry hangs the push."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # as oras does

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


class _Auth(oras.auth.TokenAuth):  # type: ignore[misc]
    """oras's bearer-token flow, plus registries that challenge with HTTP Basic (htpasswd,
    ECR): oras's token backend would take the Basic realm for a token URL and fetch it."""

    basic = False  # the registry asked for Basic: send it up front from then on

    def authenticate_request(
        self, original: requests.Response, headers: dict[str, str] | None, refresh: bool = False
    ) -> tuple[dict[str, str], bool]:
        challenge = original.headers.get("Www-Authenticate", "")
        if not challenge.lower().startswith("basic"):
            answer: tuple[dict[str, str], bool] = super().authenticate_request(
                original, headers, refresh
            )
            return answer
        credentials = getattr(self, "_basic_auth", None)
        if not credentials or (self.basic and refresh):
            return dict(headers or {}), False
        self.basic = True
        return {**(headers or {}), "Authorization": f"Basic {credentials}"}, True


class _Registry(oras.provider.Registry):  # type: ignore[misc]
    def __init__(self, host: str, plain_http: bool, timeout: float) -> None:
        super().__init__(hostname=host, insecure=plain_http)
        self.session = _TimeoutSession(timeout)
        self.auth = _Auth()
        self.auth.session, self.auth.prefix, self.auth._tls_verify = self.session, self.prefix, True

    def do_request(self, url: str, method: str = "GET", **kwargs: Any) -> requests.Response:
        if self.auth.basic:  # saves a 401 round trip (and a resent body) per request
            basic = {"Authorization": f"Basic {self.auth._basic_auth}"}
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **basic}
        response: requests.Response = _ORAS_DO_REQUEST(self, url, method, **kwargs)
        return response


def _env_credentials(auth: Any) -> None:
    """$K2TRT_REGISTRY_TOKEN (CI secrets): with $K2TRT_REGISTRY_USERNAME the pair is sent
    for the registry's token exchange, alone it is the bearer token itself."""
    token = os.environ.get("K2TRT_REGISTRY_TOKEN")
    if not token:
        return
    if user := os.environ.get("K2TRT_REGISTRY_USERNAME"):
        auth.set_basic_auth(user, token)
    else:
        auth.set_token_auth(token)


def _loopback(host: str) -> bool:
    """Registries on this machine speak plain http (as docker assumes for localhost)."""
    name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _reason(exc: BaseException) -> str:
    match = _ERRNO.search(str(exc))
    return match[1].strip().lower() if match else type(exc).__name__


def _errors(response: requests.Response) -> str:
    """The registry's own error text (OCI distribution error body), else the HTTP reason."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        text = ""
    return f"HTTP {response.status_code} {text or response.reason}"


class OciStore:
    """The Store protocol (store.py) over one registry repository."""

    def __init__(self, location: Location, options: StoreOptions) -> None:
        self.location = location
        self.url = location.root
        self.chunk = options.part_size  # bytes per PATCH (and read), a few per shard
        self.timeout = options.timeout
        plain = options.plain_http or _loopback(location.host)
        self.scheme = "http" if plain else "https"
        self.registry = _Registry(location.host, plain, options.timeout)
        self.container = self.registry.get_container(f"{location.host}/{location.path}")
        self.registry.auth.load_configs(self.container)  # `docker login`/`oras login` creds
        _env_credentials(self.registry.auth)
        self._claimed: set[str] = set()

    # -- requests ---------------------------------------------------------------------------

    def _request(
        self, method: str, url: str, what: str, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> requests.Response:
        """One request; Transient for what another try may fix, K2Error for the rest."""
        if not url.startswith("http"):
            url = f"{self.scheme}://{url}"
        try:
            response = self.registry.do_request(url, method, **kwargs)
        except requests.Timeout as exc:
            raise Transient(f"{self.url}: {what}: no answer within {self.timeout:g}s") from exc
        except requests.ConnectionError as exc:
            raise Transient(
                f"{self.url}: cannot reach {self.location.host}: {_reason(exc)}"
            ) from exc
        except ValueError as exc:  # oras: a 401 it could not answer with credentials
            raise K2Error(
                f"{self.url}: {what}: the registry refused the credentials, or asked for some "
                f"and there were none (`docker login {self.location.host}`, or set "
                f"K2TRT_REGISTRY_USERNAME and K2TRT_REGISTRY_TOKEN)"
            ) from exc
        if response.status_code in ok:
            return response
        if response.status_code >= 500 or response.status_code == 429:
            raise Transient(f"{self.url}: {what}: {_errors(response)}")
        if response.status_code in (401, 403):
            raise K2Error(
                f"{self.url}: {what}: {_errors(response)} (check the credentials: "
                f"`docker login {self.location.host}`, or K2TRT_REGISTRY_USERNAME/TOKEN)"
            )
        raise K2Error(f"{self.url}: {what}: {_errors(response)}")

    def _small(self, url: str, what: str, **kwargs: Any) -> tuple[bytes, str] | None:
        """(body, Docker-Content-Digest) of a manifest or index blob; None when absent.
        Capped: whatever a registry sends, nothing here grows without bound."""
        response = self._request("GET", url, what, ok=(200, 404), stream=True, **kwargs)
        with response:
            if response.status_code == 404:
                return None
            data = bytearray()
            for block in self._stream(response, what):
                data += block
                if len(data) > SMALL:
                    raise K2Error(f"{self.url}: {what}: more than {SMALL:,} bytes")
            return bytes(data), response.headers.get("Docker-Content-Digest", "")

    def _manifest(self, tag: str) -> tuple[bytes, str] | None:
        url = self.container.manifest_url(tag)
        return self._small(url, f"manifest {tag}", headers={"Accept": OCI_MANIFEST})

    def _blob_exists(self, digest: str) -> bool:
        url = self.container.get_blob_url(digest)
        return self._request("HEAD", url, f"blob {digest}", ok=(200, 404)).status_code == 200

    # -- push -------------------------------------------------------------------------------

    def published(self, release: LocalRelease) -> Published | None:
        found = self._manifest(version_tag(release.version))
        if found is None:
            return None
        art = read_artifact(found[0], f"{self.url}:{version_tag(release.version)}")
        return Published(art.name, art.version, art.id)

    def has(self, release: LocalRelease, entry: Entry) -> bool:
        """In the registry, or the same content as a file this push already sends."""
        if entry.sha256 in self._claimed:
            return True
        self._claimed.add(str(entry.sha256))
        return self._blob_exists(f"sha256:{entry.sha256}")

    def put(self, release: LocalRelease, entry: Entry, chunks: Iterable[bytes]) -> None:
        self._upload(entry, chunks)

    def _upload(self, entry: Entry, chunks: Iterable[bytes]) -> None:
        """POST an upload session, PATCH the chunks, PUT with the digest (which the registry
        checks); a small file goes in the closing PUT."""
        digest, what = f"sha256:{entry.sha256}", f"upload {entry.path}"
        start = self._request("POST", self.container.upload_blob_url(), what, ok=(202,))
        session = self.registry._get_location(start, self.container)
        octets = {"Content-Type": "application/octet-stream"}
        try:
            if entry.bytes <= self.chunk:
                body = b"".join(chunks)
                url = oras.utils.append_url_params(session, {"digest": digest})
                self._request("PUT", url, what, ok=(201,), data=body, headers=octets)
                return
            offset = 0
            for block in chunks:
                span = {"Content-Range": f"{offset}-{offset + len(block) - 1}", **octets}
                moved = self._request("PATCH", session, what, ok=(202,), data=block, headers=span)
                session = self.registry._get_location(moved, self.container)
                offset += len(block)
            url = oras.utils.append_url_params(session, {"digest": digest})
            self._request("PUT", url, what, ok=(201,), headers={"Content-Length": "0"})
        except BaseException:
            self._abandon(session)
            raise

    def _abandon(self, session: str) -> None:
        """Cancel an upload session (else the registry keeps the partial blob for days; its
        upload purging collects it if this fails too)."""
        with contextlib.suppress(requests.RequestException, ValueError):
            self.registry.do_request(session, "DELETE")

    def _put_bytes(self, data: bytes, path: str) -> None:
        entry = Entry(path, hashlib.sha256(data).hexdigest(), len(data))
        if not self._blob_exists(f"sha256:{entry.sha256}"):
            self._upload(entry, [data])

    def commit(self, release: LocalRelease) -> str:
        """release.json and the config blob, then the manifest under the version tag."""
        artifact = build_artifact(release)
        tag = version_tag(release.version)
        self._put_bytes(release.raw, "release.json")
        self._put_bytes(artifact.config, "config")
        if (again := self.published(release)) is not None:  # another push won the race
            raise K2Error(f"{self.url}:{tag}: published meanwhile as {again.id[:19]}...")
        response = self._request(
            "PUT",
            self.container.manifest_url(tag),
            f"manifest {tag}",
            ok=(201,),
            data=artifact.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        stored = response.headers.get("Docker-Content-Digest", artifact.digest)
        if stored != artifact.digest:
            raise CheckFailed(f"{self.url}:{tag}: registry stored {stored}, sent {artifact.digest}")
        return f"{self.url}:{tag}@{artifact.digest}"

    # -- pull -------------------------------------------------------------------------------

    def resolve(self, ref: Location) -> Remote:
        assert ref.tag is not None
        where = str(ref)
        got = self._manifest(version_tag(ref.tag))
        if got is None:
            raise K2Error(f"{where}: no version or channel '{ref.tag}' in {self.url}")
        body, served = got
        if served and served != "sha256:" + hashlib.sha256(body).hexdigest():
            raise CheckFailed(f"{where}: the manifest does not match its digest {served}")
        found = read_artifact(body, where)
        raw = self._small_blob(found.layers["release.json"], where)
        manifest = parse_release_json(raw, f"{where}: release.json")
        _check_same(found, manifest, where)
        extras = []
        if sig := found.layers.get(SIGNATURE):
            extras.append(Entry(SIGNATURE, sig["digest"].removeprefix("sha256:"), sig["size"]))
        via = None if is_version_tag(version_tag(ref.tag), found) else ref.tag
        at = f"{self.url}:{version_tag(found.version)}"
        return Remote(found.name, found.version, found.id, raw, manifest, extras, at, via, found)

    def _small_blob(self, item: dict[str, Any], where: str) -> bytes:
        got = self._small(self.container.get_blob_url(item["digest"]), "release.json")
        if got is None:
            raise K2Error(f"{where}: release.json ({item['digest']}) is not in the registry")
        data = got[0]
        if "sha256:" + hashlib.sha256(data).hexdigest() != item["digest"]:
            raise CheckFailed(f"{where}: release.json in the registry does not match its digest")
        return data

    @contextmanager
    def open(self, remote: Remote, entry: Entry) -> Iterator[Iterator[bytes]]:
        url = self.container.get_blob_url(f"sha256:{entry.sha256}")
        response = self._request("GET", url, f"download {entry.path}", stream=True)
        with response:
            yield self._stream(response, f"download {entry.path}")

    def _stream(self, response: requests.Response, what: str) -> Iterator[bytes]:
        try:
            yield from response.iter_content(self.chunk)
        except requests.RequestException as exc:  # reset or cut short mid-body
            raise Transient(f"{self.url}: {what}: {_reason(exc)}") from exc

    # -- list, promote ----------------------------------------------------------------------

    def _tags(self) -> list[str]:
        tags: list[str] = []
        url: str | None = self.container.tags_url()
        while url:
            response = self._request("GET", url, "tags", ok=(200, 404))
            if response.status_code == 404:  # a repository nothing was pushed to yet
                return []
            page = response.json().get("tags") or []
            tags += page
            nxt = response.links.get("next", {}).get("url")
            # an empty page with a "next" link would loop for ever
            url = f"{self.scheme}://{self.location.host}{nxt}" if nxt and page else None
        return sorted(tags)

    def listing(self) -> Listing:
        listing = Listing(self.url)
        for tag in self._tags():
            got = self._manifest(tag)
            if got is None:
                continue
            try:
                found = read_artifact(got[0], f"{self.url}:{tag}")
            except K2Error:
                continue  # some other artifact shares the repository
            row = {"name": found.name, "version": found.version, "id": found.id}
            if is_version_tag(tag, found):
                listing.versions.append(row)
            else:
                listing.channels.append({**row, "channel": tag})
        return listing

    def promote(self, name: str, version: str, channel: str) -> dict[str, str]:
        tag = version_tag(version)
        got = self._manifest(tag)
        if got is None:
            raise K2Error(f"{self.url}: no version {version} to promote ({self.url}:{tag})")
        found = read_artifact(got[0], f"{self.url}:{tag}")
        if (found.name, found.version) != (name, version):
            raise K2Error(f"{self.url}:{tag} holds {found.name} {found.version}, not {name}")
        before = self._manifest(channel)
        previous = read_artifact(before[0], channel).version if before else ""
        self._request(
            "PUT",
            self.container.manifest_url(channel),
            f"tag {channel}",
            ok=(201,),
            data=got[0],
            headers={"Content-Type": OCI_MANIFEST},
        )
        return {"store": self.url, "name": name, "channel": channel, "version": version,
                "id": found.id, "previous": previous}  # fmt: skip


def _check_same(found: Found, manifest: dict[str, Any], where: str) -> None:
    said = (manifest["name"], manifest["version"], manifest["id"])
    if said != (found.name, found.version, found.id):
        raise CheckFailed(
            f"{where}: release.json is {said[0]} {said[1]} ({said[2][:19]}...), the manifest "
            f"says {found.name} {found.version} ({found.id[:19]}...)"
        )
