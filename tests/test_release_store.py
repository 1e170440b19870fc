"""Store-agnostic parts of push/pull: locations, retries, hashing in transit, and the one-line
errors for bad input (unknown scheme, unreachable store, missing credentials)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from cli_run import run
from k2trt.errors import CheckFailed, K2Error
from k2trt.release.store import (
    Entry,
    RetryPolicy,
    Transient,
    check_channel,
    parse_location,
    parse_release_json,
    read_checked,
    receive,
    retrying,
    safe_path,
    tag_version,
    version_tag,
)
from store_helpers import FAST, Releases, free_port

pytest_plugins = ["store_servers"]


LOCATIONS = [
    ("oci://127.0.0.1:5000/k2/kimi-k2", ("oci", "127.0.0.1:5000", "k2/kimi-k2", None)),
    ("oci://registry.example.com/k2trt/kimi-k2:stable",
     ("oci", "registry.example.com", "k2trt/kimi-k2", "stable")),
    ("oci://[::1]:5000/kimi-k2:1.0.0_build.5",
     ("oci", "[::1]:5000", "kimi-k2", "1.0.0_build.5")),
    ("s3://releases", ("s3", "releases", "", None)),
    ("s3://releases/team/k2/", ("s3", "releases", "team/k2", None)),
    ("s3://releases/team/kimi-k2:1.0.0", ("s3", "releases", "team/kimi-k2", "1.0.0")),
]  # fmt: skip
OCI_SHAPE = "expected oci://HOST[:PORT]/REPO[:TAG] (lowercase repository)"
BAD_TAG = "is not a valid tag (letters, digits, . _ -)"
S3_SHAPE = "expected s3://BUCKET[/PREFIX] (a valid bucket name)"
BAD_LOCATIONS = [
    ("ftp://host/repo", "unknown scheme 'ftp' (expected oci:// or s3://)"),
    ("registry/k2", "expected oci://HOST[:PORT]/REPO[:TAG] or s3://BUCKET[/PREFIX]"),
    ("oci://host/K2", OCI_SHAPE),
    ("oci://host", OCI_SHAPE),
    ("oci://host/k2:a+b", f"'a+b' {BAD_TAG}"),
    ("oci://host/k2@sha256:ab", "digest references are not supported; name a version or channel"),
    ("s3://B/p", S3_SHAPE),
    ("s3://bucket/../x", S3_SHAPE),
    ("s3://bucket/:1.0.0", "a release in S3 is s3://BUCKET[/PREFIX]/NAME:TAG"),
]


@pytest.mark.parametrize(("text", "parts"), LOCATIONS)
def test_locations(text: str, parts: tuple[str, str, str, str | None]) -> None:
    where = parse_location(text)
    assert (where.scheme, where.host, where.path, where.tag) == parts
    assert str(where) == text


@pytest.mark.parametrize(("text", "error"), BAD_LOCATIONS)
def test_bad_locations_are_one_line(text: str, error: str) -> None:
    with pytest.raises(K2Error) as info:
        parse_location(text)
    assert str(info.value) == f"{text}: {error}"


def test_version_tags_and_channels() -> None:
    assert version_tag("1.2.0-rc.1+build.7") == "1.2.0-rc.1_build.7"
    assert tag_version("1.2.0-rc.1_build.7") == "1.2.0-rc.1+build.7"
    assert check_channel("stable") == "stable"
    for bad in ("1.0.0", "Stable", "-x", ""):
        with pytest.raises(K2Error, match="--channel: expected a name starting with"):
            check_channel(bad)


def test_retries_are_bounded_and_end_in_one_line() -> None:
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise Transient("oci://h/r: cannot reach h: connection refused")
        return "done"

    assert retrying(flaky, RetryPolicy(attempts=3, backoff=0.01)) == "done"
    assert len(calls) == 3
    calls.clear()

    def dead() -> str:
        calls.append(time.monotonic())
        raise Transient("oci://h/r: cannot reach h: connection refused")

    with pytest.raises(K2Error) as info:
        retrying(dead, RetryPolicy(attempts=4, backoff=0.01))
    assert str(info.value) == (
        "oci://h/r: cannot reach h: connection refused (gave up after 4 attempt(s))"
    )
    assert len(calls) == 4
    assert RetryPolicy(attempts=6, backoff=0.5, cap=4.0).delays() == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_retry_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K2TRT_STORE_RETRIES", "3")
    monkeypatch.setenv("K2TRT_STORE_BACKOFF", "0.25")
    assert RetryPolicy.from_env() == RetryPolicy(attempts=3, backoff=0.25)
    monkeypatch.setenv("K2TRT_STORE_RETRIES", "many")
    with pytest.raises(K2Error, match="K2TRT_STORE_RETRIES/K2TRT_STORE_BACKOFF: invalid literal"):
        RetryPolicy.from_env()


def _entry(data: bytes, path: str = "a/b.json") -> Entry:
    return Entry(path, hashlib.sha256(data).hexdigest(), len(data))


def test_a_file_that_changed_since_release_json_is_never_sent_whole(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_bytes(b"0123456789")
    assert list(read_checked(path, _entry(b"0123456789"), 4, "s3://b")) == [b"0123", b"4567", b"89"]
    chunks = read_checked(path, _entry(b"0123456788"), 4, "s3://b")
    assert next(chunks) == b"0123"  # the error comes before the upload can be completed
    with pytest.raises(CheckFailed, match=r"b.json: changed while pushing \(10 bytes.*nothing"):
        list(chunks)


@pytest.mark.parametrize(
    ("served", "error"),
    [
        (b"01234", "s3://b/k2/x/1.0.0: a/b.json: 5 bytes in the store, release.json says 10 "
                   "(truncated or replaced)"),
        (b"0123456789ab", "s3://b/k2/x/1.0.0: a/b.json: more than bytes in the store, "
                          "release.json says 10 (truncated or replaced)"),
        (b"0123456780", "s3://b/k2/x/1.0.0: a/b.json: sha256 "),
    ],
)  # fmt: skip
def test_a_download_that_differs_is_refused_naming_the_file(
    tmp_path: Path, served: bytes, error: str
) -> None:
    with pytest.raises(CheckFailed) as info:
        receive(
            [served[:6], served[6:]], tmp_path / "x", _entry(b"0123456789"), "s3://b/k2/x/1.0.0"
        )
    assert str(info.value).startswith(error)
    assert (tmp_path / "x").stat().st_size <= 10  # never more than release.json promised


def test_a_pulled_release_json_cannot_write_outside_the_release() -> None:
    with pytest.raises(K2Error) as info:
        safe_path("../../etc/cron.d/x", "oci://h/r:1.0.0: release.json")
    assert str(info.value) == (
        "oci://h/r:1.0.0: release.json: file path '../../etc/cron.d/x' leaves the release"
    )
    for bad in ("/etc/passwd", "a//b", "a/./b", "a\\b", ""):
        with pytest.raises(K2Error, match="leaves the release"):
            safe_path(bad, "release.json")
    good = {"format": "k2trt.release/1", "id": "sha256:x", "files": {}, "target": {},
            "versions": {}, "checkpoint": {}}  # fmt: skip
    assert parse_release_json(json.dumps({**good, "name": "k2", "version": "1.0.0"}).encode(), "w")
    for name, version in (("../k2", "1.0.0"), ("k2", "../1.0.0"), ("k2", "1.0")):
        with pytest.raises(CheckFailed, match=r"^w: name .* or version .* invalid$"):
            parse_release_json(json.dumps({**good, "name": name, "version": version}).encode(), "w")
    with pytest.raises(CheckFailed, match="'files' must map paths"):
        data = {**good, "name": "k2", "version": "1.0.0", "files": {"release.sig": {}}}
        parse_release_json(json.dumps(data).encode(), "w")


def test_unknown_scheme_and_missing_tag_from_the_cli(
    releases: Releases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "release", "push", str(releases.signed), "ftp://host/k2")
    assert (code, out) == (2, "")
    assert err == "error: ftp://host/k2: unknown scheme 'ftp' (expected oci:// or s3://)\n"
    code, _, err = run(capsys, "release", "pull", "oci://127.0.0.1:1/k2", str(tmp_path))
    assert code == 2
    assert err == (
        "error: oci://127.0.0.1:1/k2: name a version or a channel, e.g. "
        "oci://127.0.0.1:1/k2:1.0.0 or oci://127.0.0.1:1/k2:stable\n"
    )


def test_pull_weights_must_be_a_directory(tmp_path: Path) -> None:
    from k2trt.release.publish import pull_release

    with pytest.raises(K2Error) as info:
        pull_release("oci://127.0.0.1:1/k2:1.0.0", tmp_path, weights=tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: --weights: not a directory"


def test_an_unreachable_registry_is_one_line_and_fast(
    releases: Releases, fast_retries: None, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    code, _, err = run(
        capsys, "release", "push", str(releases.signed), f"oci://127.0.0.1:{port}/k2"
    )
    assert time.monotonic() - started < 5
    assert code == 2
    assert err == (
        f"error: oci://127.0.0.1:{port}/k2: cannot reach 127.0.0.1:{port}: connection refused "
        f"(gave up after {FAST.attempts} attempt(s))\n"
    )


def test_an_unreachable_s3_endpoint_is_one_line_and_fast(
    aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    started = time.monotonic()
    code, _, err = run(
        capsys, "release", "list", "s3://releases/k2", "--endpoint-url", f"http://127.0.0.1:{port}"
    )
    assert time.monotonic() - started < 5
    assert code == 2
    assert err.startswith("error: s3://releases/k2: list k2/: cannot reach the store (")
    assert err.endswith(f"(gave up after {FAST.attempts} attempt(s))\n")
    assert err.count("\n") == 1


def test_missing_s3_credentials_are_one_line(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, _, err = run(
        capsys, "release", "list", "s3://releases/k2", "--endpoint-url", "http://127.0.0.1:1"
    )
    assert code == 2
    assert err == (
        "error: s3://releases/k2: no AWS credentials (set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance role)\n"
    )
