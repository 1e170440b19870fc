"""push/pull/list/promote against a real S3 server (moto_server): conditional writes, SHA-256
checksums, multipart, release.json last, channels replaced conditionally."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from cli_run import run
from k2trt.errors import CheckFailed, K2Error
from k2trt.release.publish import (
    list_releases,
    load_local,
    promote_release,
    pull_release,
    push_release,
)
from release_fixtures import files_of
from store_helpers import Releases, S3Server, left_in, variant

pytest_plugins = ["store_servers"]
PREFIX = "team/k2"


@pytest.fixture(scope="module")
def store(s3_server: S3Server, releases: Releases) -> str:
    """A bucket with 1.0.0 and 1.1.0 pushed (1.1.0 in 64 KiB parts), stable -> 1.0.0."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "test")
        url = f"s3://{s3_server.bucket()}/{PREFIX}"
        push_release(releases.signed, url, s3_server.options())
        parts = s3_server.options(multipart_threshold=256 << 10, part_size=64 << 10)
        push_release(releases.weights, url, parts)
        promote_release(url, "kimi-k2-tiny", "1.0.0", "stable", s3_server.options())
    return url


def bucket_of(url: str) -> str:
    return url.removeprefix("s3://").split("/")[0]


def test_objects_carry_their_sha256_and_large_ones_went_in_parts(
    s3_server: S3Server, store: str, releases: Releases
) -> None:
    client, bucket = s3_server.client(), bucket_of(store)
    release = json.loads((releases.weights / "release.json").read_text())
    for path, want in release["files"].items():
        key = f"{PREFIX}/kimi-k2-tiny/1.1.0/{path}"
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["Metadata"] == {"sha256": want["sha256"]}
        assert head["ContentLength"] == want["bytes"]
        if want["bytes"] <= 256 << 10:  # a single PUT: S3's own full-object checksum
            assert (
                head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(want["sha256"])).decode()
            )
    shards = [p for p in release["files"] if p.endswith(".safetensors")]
    parts = [line for line in s3_server.requests("PUT", bucket) if "partNumber=" in line]
    expected = sum(-(-release["files"][p]["bytes"] // (64 << 10)) for p in shards)
    assert len(parts) == expected
    # release.json is the last object a push writes: before it, the version does not exist
    puts = [line for line in s3_server.requests("PUT", bucket) if "/kimi-k2-tiny/1.1.0/" in line]
    assert "/kimi-k2-tiny/1.1.0/release.json " in puts[-1]


def test_round_trip_by_version_and_by_channel(
    aws_env: None, s3_server: S3Server, store: str, releases: Releases, tmp_path: Path
) -> None:
    options = s3_server.options(part_size=64 << 10)
    src = f"{store}/kimi-k2-tiny"
    pulled = pull_release(f"{src}:1.0.0", tmp_path, options, public_key=releases.public_key)
    assert files_of(Path(pulled.path)) == files_of(releases.signed)
    assert pulled.checked[1:] == ["signature"]
    by_channel = pull_release(f"{src}:stable", tmp_path / "c", options)
    assert (by_channel.version, by_channel.via, by_channel.source) == (
        "1.0.0", "stable", f"{src}/1.0.0",
    )  # fmt: skip
    with_weights = pull_release(f"{src}:1.1.0", tmp_path, options, public_key=releases.public_key)
    assert files_of(Path(with_weights.path)) == files_of(releases.weights)


def test_list_and_promote_from_the_cli(
    aws_env: None, s3_server: S3Server, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = ("--endpoint-url", s3_server.endpoint)
    code, out, _ = run(capsys, "--json", "release", "list", store, *endpoint)
    assert code == 0
    listing = json.loads(out)
    ids = {v["version"]: v["id"] for v in listing["versions"]}
    assert sorted(ids) == ["1.0.0", "1.1.0"]
    assert listing["channels"] == [
        {"name": "kimi-k2-tiny", "channel": "stable", "version": "1.0.0", "id": ids["1.0.0"]}
    ]
    code, out, _ = run(capsys, "release", "promote", store, "kimi-k2-tiny", "1.1.0",
                       "--channel", "stable", *endpoint)  # fmt: skip
    assert code == 0
    assert out == f"{store}: kimi-k2-tiny stable -> 1.1.0 (was 1.0.0)  {ids['1.1.0']}\n"
    key = f"{PREFIX}/kimi-k2-tiny/channels/stable.json"
    body = s3_server.client().get_object(Bucket=bucket_of(store), Key=key)["Body"].read()
    assert json.loads(body) == {
        "channel": "stable", "format": "k2trt.channel/1", "name": "kimi-k2-tiny",
        "release": ids["1.1.0"], "version": "1.1.0",
    }  # fmt: skip
    promote_release(store, "kimi-k2-tiny", "1.0.0", "stable", s3_server.options())
    code, _, err = run(capsys, "release", "promote", store, "kimi-k2-tiny", "2.0.0",
                       "--channel", "stable", *endpoint)  # fmt: skip
    assert (code, err) == (2, f"error: {store}: no version 2.0.0 of kimi-k2-tiny to promote\n")


def test_a_channel_moved_by_someone_else_meanwhile_is_not_overwritten(
    aws_env: None, s3_server: S3Server, store: str
) -> None:
    """If-Match on the channel object: a promotion based on a stale read fails."""
    from k2trt.release.s3 import S3Store
    from k2trt.release.store import parse_location

    s3 = S3Store(parse_location(store), s3_server.options())
    stale = s3._get(f"{PREFIX}/kimi-k2-tiny/channels/stable.json")
    assert stale is not None
    promote_release(store, "kimi-k2-tiny", "1.1.0", "stable", s3_server.options())
    with pytest.raises(K2Error, match="PreconditionFailed"):
        s3._put_object(f"{PREFIX}/kimi-k2-tiny/channels/stable.json", b"{}",
                       hashlib.sha256(b"{}").hexdigest(), stale[1])  # fmt: skip
    promote_release(store, "kimi-k2-tiny", "1.0.0", "stable", s3_server.options())


def test_half_finished_resumed_and_repeated_pushes(
    aws_env: None, s3_server: S3Server, releases: Releases, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bucket = s3_server.bucket()
    url, options = f"s3://{bucket}", s3_server.options()
    copy = tmp_path / "kimi-k2-tiny" / "1.0.0"
    shutil.copytree(releases.signed, copy)
    late = copy / "triton/model_repository/tensorrt_llm/config.pbtxt"
    original = late.read_bytes()
    late.write_bytes(original.replace(b"max_batch_size", b"max_batch_sizE"))
    with pytest.raises(CheckFailed, match=r"config.pbtxt: changed while pushing"):
        push_release(copy, url, options)
    sent = len(s3_server.requests("PUT", bucket))
    assert sent > 0
    assert list_releases(url, options).versions == []  # no release.json: not a release
    with pytest.raises(K2Error, match=r"no version or channel '1.0.0' in s3://"):
        pull_release(f"{url}/kimi-k2-tiny:1.0.0", tmp_path / "out", options)
    late.write_bytes(original)
    resumed = push_release(copy, url, options)
    assert (resumed.uploaded, resumed.skipped) == (len(load_local(copy).entries) - sent, sent)
    assert len(s3_server.requests("PUT", bucket)) == sent + resumed.uploaded + 1  # + release.json
    before = len(s3_server.requests("PUT", bucket))
    code, out, _ = run(capsys, "release", "push", str(copy), url, "--endpoint-url",
                       s3_server.endpoint)  # fmt: skip
    assert code == 0
    assert out.endswith(f"is already in {url}: nothing sent\n")
    assert len(s3_server.requests("PUT", bucket)) == before


def test_a_published_version_is_never_overwritten(
    aws_env: None, s3_server: S3Server, store: str, releases: Releases, tmp_path: Path
) -> None:
    other = variant(releases.signed, tmp_path / "rebuilt")
    with pytest.raises(K2Error, match=r"kimi-k2-tiny 1.0.0 is already published as another"):
        push_release(other, store, s3_server.options())
    # and the objects themselves refuse a blind overwrite (If-None-Match: *)
    bucket = s3_server.bucket()
    url = f"s3://{bucket}"
    push_release(releases.signed, url, s3_server.options())
    notes = "kimi-k2-tiny/1.0.0/RELEASE_NOTES.md"
    s3_server.client().delete_object(Bucket=bucket, Key="kimi-k2-tiny/1.0.0/release.json")
    with pytest.raises(K2Error) as info:
        push_release(other, url, s3_server.options())
    assert str(info.value).startswith(
        f"s3://{bucket}/{notes}: exists with other content (an unfinished push of another "
        f"build?); delete s3://{bucket}/kimi-k2-tiny/1.0.0/ to push this one"
    )


@pytest.mark.parametrize("how", ["tampered", "truncated"])
def test_an_object_changed_out_of_band_is_refused_naming_the_file(
    aws_env: None, s3_server: S3Server, releases: Releases, tmp_path: Path, how: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bucket = s3_server.bucket()
    url = f"s3://{bucket}"
    push_release(releases.signed, url, s3_server.options())
    path = "engine/llm_api_options.yaml"
    data = (releases.signed / path).read_bytes()
    bad = data.replace(b"8", b"9") if how == "tampered" else data[:10]
    s3_server.client().put_object(Bucket=bucket, Key=f"kimi-k2-tiny/1.0.0/{path}", Body=bad)
    code, _, err = run(capsys, "release", "pull", f"{url}/kimi-k2-tiny:1.0.0", str(tmp_path),
                       "--endpoint-url", s3_server.endpoint)  # fmt: skip
    assert code == 1
    head = f"error: {url}/kimi-k2-tiny/1.0.0: {path}: "
    if how == "tampered":
        assert err.startswith(f"{head}sha256 ") and err.endswith("(tampered or corrupt)\n")
    else:
        assert err == (
            f"{head}10 bytes in the store, release.json says {len(data):,} "
            f"(truncated or replaced)\n"
        )
    assert left_in(tmp_path) == []


def test_signature_and_weights_checks_on_pull(
    aws_env: None, s3_server: S3Server, store: str, releases: Releases, tmp_path: Path
) -> None:
    src, options = f"{store}/kimi-k2-tiny:1.0.0", s3_server.options()
    with pytest.raises(CheckFailed) as info:
        pull_release(src, tmp_path / "a", options, public_key=releases.other_key)
    assert str(info.value).startswith(f"{store}/kimi-k2-tiny/1.0.0/release.sig: ")
    assert left_in(tmp_path / "a") == []
    pulled = pull_release(src, tmp_path / "b", options, weights=releases.prepared)
    assert pulled.checked[-1] == f"weights in {releases.prepared}"
    copy = tmp_path / "weights"
    shutil.copytree(releases.prepared, copy)
    (copy / "config.json").unlink()
    with pytest.raises(CheckFailed, match=r"config.json: missing from the weights; nothing"):
        pull_release(src, tmp_path / "c", options, weights=copy)
    assert left_in(tmp_path / "c") == []


def test_a_bucket_that_does_not_exist(
    aws_env: None, s3_server: S3Server, releases: Releases
) -> None:
    with pytest.raises(K2Error) as info:
        push_release(releases.signed, "s3://no-such-bucket/k2", s3_server.options())
    assert str(info.value).startswith(
        "s3://no-such-bucket/k2: get k2/kimi-k2-tiny/1.0.0/release.json: NoSuchBucket"
    )
