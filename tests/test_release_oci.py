"""push/pull/list/promote against a real OCI registry (Debian's docker-registry, distribution
2.8), and the ModelPack artifact checked against upstream's schema and examples."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cli_run import run
from k2trt.errors import CheckFailed, K2Error
from k2trt.release import modelpack
from k2trt.release.publish import (
    list_releases,
    load_local,
    promote_release,
    pull_release,
    push_release,
)
from k2trt.release.store import StoreOptions
from release_fixtures import files_of
from store_helpers import FAST, Registry, Releases, left_in, replaced, sha, variant

pytest_plugins = ["store_servers"]

DATA = Path(__file__).parent / "data" / "modelpack"
OPTIONS = StoreOptions(retry=FAST)


def get_json(registry: Registry, path: str, accept: str = modelpack.OCI_MANIFEST) -> Any:
    request = urllib.request.Request(
        f"http://{registry.server.host}/v2/{path}", headers={"Accept": accept}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def listed(release: Path) -> int:
    return len(json.loads((release / "release.json").read_text())["files"])


def schema_errors(config: Any) -> list[str]:
    schema = json.loads((DATA / "config-schema.json").read_text())
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
    return [e.message for e in validator.iter_errors(config)]


@pytest.fixture(scope="module")
def published(registry: Registry, releases: Releases) -> str:
    """k2/published: 1.0.0 and 1.1.0 pushed, stable -> 1.0.0."""
    url = registry.url("k2/published")
    push_release(releases.signed, url, OPTIONS)
    # in 64 KiB PATCHes: each shard is sent in ~20 requests, the digest checked at the end
    push_release(releases.weights, url, StoreOptions(retry=FAST, part_size=64 << 10))
    promote_release(url, "kimi-k2-tiny", "1.0.0", "stable", OPTIONS)
    return url


def test_upstream_examples_validate_and_use_the_constants_we_push() -> None:
    assert schema_errors(json.loads((DATA / "config-example.json").read_text())) == []
    example = json.loads((DATA / "manifest-example.json").read_text())
    assert (example["mediaType"], example["artifactType"], example["config"]["mediaType"]) == (
        modelpack.OCI_MANIFEST, modelpack.ARTIFACT_TYPE, modelpack.CONFIG,
    )  # fmt: skip
    # upstream's example uses the tar variants; ours are the raw ones beside them
    tar_types = {layer["mediaType"] for layer in example["layers"]}
    raw = {modelpack.WEIGHT, modelpack.WEIGHT_CONFIG, modelpack.DOC}
    assert {t.removesuffix(".tar") + ".raw" for t in tar_types} == raw


def test_media_types_of_a_release(releases: Releases) -> None:
    local = load_local(releases.weights)
    by_type: dict[str, list[str]] = {}
    for entry in local.entries:
        by_type.setdefault(modelpack.media_type(entry.path), []).append(entry.path)
    assert sorted(by_type[modelpack.WEIGHT]) == [
        f"checkpoint/weights/model-{i}-of-3.safetensors" for i in (1, 2, 3)
    ]
    assert sorted(by_type[modelpack.CODE]) == [
        "triton/launch/Dockerfile", "triton/launch/serve-docker.sh",
        "triton/launch/serve-mpirun.sh", "triton/launch/serve.sbatch",
        "triton/model_repository/chat/1/model.py",
        "triton/model_repository/postprocessing/1/model.py",
        "triton/model_repository/preprocessing/1/model.py",
        "triton/model_repository/tensorrt_llm/1/model.py",
    ]  # fmt: skip
    assert sorted(by_type[modelpack.DOC]) == ["RELEASE_NOTES.md", "release.sig", "stages.json"]
    assert "engine/llm_api_options.yaml" in by_type[modelpack.WEIGHT_CONFIG]
    assert "checkpoint/weights/tiktoken.model" in by_type[modelpack.WEIGHT_CONFIG]


def test_the_artifact_in_the_registry_is_a_modelpack_model(
    registry: Registry, releases: Releases, published: str
) -> None:
    manifest = get_json(registry, "k2/published/manifests/1.1.0")
    assert manifest["mediaType"] == modelpack.OCI_MANIFEST
    assert manifest["artifactType"] == modelpack.ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == modelpack.CONFIG
    release = json.loads((releases.weights / "release.json").read_text())
    assert manifest["annotations"] == {
        "k2trt.release.id": release["id"],
        "k2trt.release.name": "kimi-k2-tiny",
        "k2trt.release.version": "1.1.0",
        "org.opencontainers.image.created": release["created"],
        "org.opencontainers.image.version": "1.1.0",
    }
    layers = {item["annotations"][modelpack.FILEPATH]: item for item in manifest["layers"]}
    assert set(layers) == {*release["files"], "release.sig", "release.json"}
    for path, want in release["files"].items():  # each layer's digest is the file's sha256
        assert (layers[path]["digest"], layers[path]["size"]) == (
            f"sha256:{want['sha256']}", want["bytes"],
        )  # fmt: skip
        assert layers[path]["mediaType"] == modelpack.media_type(path)
    config = get_json(registry, f"k2/published/blobs/{manifest['config']['digest']}", "*/*")
    assert schema_errors(config) == []
    assert config["modelfs"] == {
        "type": "layers", "diffIds": [item["digest"] for item in manifest["layers"]],
    }  # fmt: skip
    assert config["descriptor"] == {
        "createdAt": release["created"], "family": "kimi-k2", "name": "kimi-k2-tiny",
        "revision": "r1", "sourceURL": "https://huggingface.co/moonshotai/Kimi-K2-Instruct",
        "version": "1.1.0",
    }  # fmt: skip
    assert config["config"] == {
        "architecture": "transformer", "format": "safetensors", "paramSize": "4M",
        "capabilities": {"inputTypes": ["text"], "outputTypes": ["text"], "toolUsage": True},
    }  # fmt: skip


def test_large_files_went_in_chunks(registry: Registry, releases: Releases, published: str) -> None:
    patches = [
        line for line in registry.server.log_lines() if '"PATCH /v2/k2/published/blobs/' in line
    ]
    had = {e.sha256 for e in load_local(releases.signed).entries}  # pushed before, in one PUT
    sent = {e.sha256: e.bytes for e in load_local(releases.weights).entries if e.sha256 not in had}
    # a file above one chunk went in 64 KiB PATCHes (a smaller one in the closing PUT)
    chunks = sum(-(-n // (64 << 10)) for n in sent.values() if n > 64 << 10)
    assert len(patches) == chunks > 60


def test_round_trip_by_version_and_by_channel(
    published: str, releases: Releases, tmp_path: Path
) -> None:
    pulled = pull_release(f"{published}:1.0.0", tmp_path, OPTIONS, public_key=releases.public_key)
    assert (pulled.path, pulled.via) == (str(tmp_path / "kimi-k2-tiny" / "1.0.0"), None)
    assert pulled.checked == [f"{listed(releases.signed)} files by sha256", "signature"]
    assert files_of(Path(pulled.path)) == files_of(releases.signed)
    by_channel = pull_release(f"{published}:stable", tmp_path / "c", OPTIONS)
    assert (by_channel.version, by_channel.via) == ("1.0.0", "stable")
    assert by_channel.source == f"{published}:1.0.0"
    # weights travel in 1.1.0: layers of media type weight.v1.raw, pulled byte for byte
    with_weights = pull_release(f"{published}:1.1.0", tmp_path, OPTIONS)
    assert files_of(Path(with_weights.path)) == files_of(releases.weights)


def test_list_and_promote(published: str, capsys: pytest.CaptureFixture[str]) -> None:
    ids = {v["version"]: v["id"] for v in list_releases(published, OPTIONS).versions}
    code, out, _ = run(capsys, "release", "promote", published, "kimi-k2-tiny", "1.1.0",
                       "--channel", "canary")  # fmt: skip
    assert code == 0
    assert out == f"{published}: kimi-k2-tiny canary -> 1.1.0 (new channel)  {ids['1.1.0']}\n"
    code, out, _ = run(capsys, "release", "list", published)
    assert code == 0
    assert out.splitlines() == [
        published,
        f"  kimi-k2-tiny 1.0.0  {ids['1.0.0']}",
        f"  kimi-k2-tiny 1.1.0  {ids['1.1.0']}",
        f"  kimi-k2-tiny canary -> 1.1.0  {ids['1.1.0']}",
        f"  kimi-k2-tiny stable -> 1.0.0  {ids['1.0.0']}",
    ]
    moved = promote_release(published, "kimi-k2-tiny", "1.0.0", "canary", OPTIONS)
    assert (moved["previous"], moved["version"]) == ("1.1.0", "1.0.0")
    code, out, _ = run(capsys, "--json", "release", "list", published)
    assert {c["channel"]: c["version"] for c in json.loads(out)["channels"]} == {
        "canary": "1.0.0", "stable": "1.0.0",
    }  # fmt: skip


def test_a_channel_naming_a_missing_version_is_refused(
    published: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "release", "promote", published, "kimi-k2-tiny", "9.9.9",
                       "--channel", "stable")  # fmt: skip
    assert code == 2
    assert err == f"error: {published}: no version 9.9.9 to promote ({published}:9.9.9)\n"
    with pytest.raises(K2Error, match=r":1.0.0 holds kimi-k2-tiny 1.0.0, not other-model$"):
        promote_release(published, "other-model", "1.0.0", "stable", OPTIONS)
    with pytest.raises(K2Error, match="--channel: expected a name starting with a lowercase"):
        promote_release(published, "kimi-k2-tiny", "1.0.0", "1.1.0", OPTIONS)


def test_a_repeated_push_uploads_nothing_and_a_resumed_one_only_the_rest(
    registry: Registry, releases: Releases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, repo = registry.url("k2/resume"), "k2/resume"
    copy = tmp_path / "kimi-k2-tiny" / "1.0.0"
    shutil.copytree(releases.signed, copy)
    late = copy / "triton/model_repository/tensorrt_llm/config.pbtxt"  # sorted near the end
    original = late.read_bytes()
    late.write_bytes(original.replace(b"max_batch_size", b"max_batch_sizE"))
    with pytest.raises(CheckFailed, match=r"config.pbtxt: changed while pushing .* nothing commit"):
        push_release(copy, url, OPTIONS)
    assert list_releases(url, OPTIONS).versions == []  # a half-finished push is no release
    sent_before = registry.uploads(repo)
    assert sent_before > 0
    late.write_bytes(original)
    resumed = push_release(copy, url, OPTIONS)
    # resumed: only the rest (blobs are by content: files alike are sent once)
    unique = {e.sha256 for e in load_local(copy).entries}
    assert resumed.uploaded == len(unique) - sent_before
    # ... then the manifest's own two blobs: release.json and the config
    assert registry.uploads(repo) == sent_before + resumed.uploaded + 2
    before = registry.uploads(repo)
    code, out, _ = run(capsys, "release", "push", str(copy), url)
    assert code == 0
    assert out.endswith(f"is already in {url}: nothing sent\n")
    assert registry.uploads(repo) == before


def test_overwriting_a_published_version_is_refused(
    registry: Registry, published: str, releases: Releases, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    other = variant(releases.signed, tmp_path / "rebuilt")
    code, _, err = run(capsys, "release", "push", str(other), published)
    assert code == 2
    assert err.startswith(f"error: {published}: kimi-k2-tiny 1.0.0 is already published as ")
    assert err.endswith("versions are immutable: build a new version\n")
    release = json.loads((releases.signed / "release.json").read_text())
    manifest = get_json(registry, "k2/published/manifests/1.0.0")
    assert manifest["annotations"]["k2trt.release.id"] == release["id"]


@pytest.mark.parametrize("how", ["tampered", "truncated"])
def test_a_bad_blob_in_the_registry_is_refused_naming_the_file(
    registry: Registry, published: str, releases: Releases, tmp_path: Path, how: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = "triton/model_repository/tensorrt_llm/1/model.yaml"
    blob = registry.blob(sha(releases.signed, path))
    data = blob.read_bytes()
    bad = data.replace(b"8", b"9") if how == "tampered" else data[: len(data) // 2]
    with replaced(blob, bad):
        code, _, err = run(capsys, "release", "pull", f"{published}:stable", str(tmp_path))
    assert code == 1
    head = f"error: {published}:1.0.0: {path}: "
    if how == "tampered":
        assert err.startswith(f"{head}sha256 ") and err.endswith("(tampered or corrupt)\n")
    else:
        assert err == (
            f"{head}{len(bad):,} bytes in the store, release.json says {len(data):,} "
            f"(truncated or replaced)\n"
        )
    assert left_in(tmp_path) == []


def test_a_signature_from_another_key_is_refused(
    published: str, releases: Releases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "release", "pull", f"{published}:1.0.0", str(tmp_path),
                       "--public-key", str(releases.other_key))  # fmt: skip
    assert code == 1
    assert err.startswith(f"error: {published}:1.0.0/release.sig: ")
    assert err.endswith("; nothing written\n")
    assert left_in(tmp_path) == []


def test_push_checks_the_signature_when_given_a_key(registry: Registry, releases: Releases) -> None:
    url = registry.url("k2/unsigned-by-that-key")
    with pytest.raises(CheckFailed) as info:
        push_release(releases.signed, url, OPTIONS, public_key=releases.other_key)
    assert str(info.value).startswith(f"{releases.signed / 'release.sig'}: signature does not")
    assert str(info.value).endswith("; nothing pushed")
    assert registry.uploads("k2/unsigned-by-that-key") == 0
    pushed = push_release(releases.signed, url, OPTIONS, public_key=releases.public_key)
    assert pushed.uploaded > 0


def test_pull_checks_a_local_copy_of_referenced_weights(
    published: str, releases: Releases, tmp_path: Path
) -> None:
    pulled = pull_release(f"{published}:1.0.0", tmp_path / "a", OPTIONS, weights=releases.prepared)
    assert pulled.checked == [
        f"{listed(releases.signed)} files by sha256", f"weights in {releases.prepared}",
    ]  # fmt: skip
    copy = tmp_path / "weights"
    shutil.copytree(releases.prepared, copy)
    shard = copy / "model-2-of-3.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckFailed) as info:
        pull_release(f"{published}:1.0.0", tmp_path / "b", OPTIONS, weights=copy)
    assert str(info.value).startswith(f"{shard}: sha256 ")
    assert left_in(tmp_path / "b") == []


def test_pull_refuses_an_existing_release_without_force(published: str, tmp_path: Path) -> None:
    pull_release(f"{published}:1.0.0", tmp_path, OPTIONS)
    with pytest.raises(K2Error, match="output already exists"):
        pull_release(f"{published}:stable", tmp_path, OPTIONS)
    assert pull_release(f"{published}:stable", tmp_path, OPTIONS, force=True).version == "1.0.0"


def test_a_tag_that_is_not_there(published: str, tmp_path: Path) -> None:
    with pytest.raises(K2Error) as info:
        pull_release(f"{published}:nightly", tmp_path, OPTIONS)
    assert str(info.value) == (
        f"{published}:nightly: no version or channel 'nightly' in {published}"
    )
    with pytest.raises(K2Error, match=r"a push publishes the release's version \(1.0.0\)"):
        push_release(Path(pull_release(f"{published}:1.0.0", tmp_path, OPTIONS).path),
                     f"{published}:stable", OPTIONS)  # fmt: skip


def test_a_registry_that_asks_for_credentials(
    login_registry: Registry, releases: Releases, tmp_path: Path, fast_retries: None,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    url, host = login_registry.url("k2/private"), login_registry.server.host
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.docker/config.json of the machine's
    for name in ("K2TRT_REGISTRY_USERNAME", "K2TRT_REGISTRY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run(capsys, "release", "list", url)
    assert code == 2
    assert err == (
        f"error: {url}: tags: the registry refused the credentials, or asked for some and "
        f"there were none (`docker login {host}`, or set K2TRT_REGISTRY_USERNAME and "
        f"K2TRT_REGISTRY_TOKEN)\n"
    )
    monkeypatch.setenv("K2TRT_REGISTRY_USERNAME", "ci")
    monkeypatch.setenv("K2TRT_REGISTRY_TOKEN", "wrong")
    code, _, err = run(capsys, "release", "list", url)
    assert (code, err.count("\n")) == (2, 1)
    assert "HTTP 401 UNAUTHORIZED: authentication required (check the credentials" in err
    monkeypatch.setenv("K2TRT_REGISTRY_TOKEN", "secret")
    assert push_release(releases.signed, url, OPTIONS).uploaded > 0
    # `docker login` credentials, as oras reads them from ~/.docker/config.json
    monkeypatch.delenv("K2TRT_REGISTRY_TOKEN")
    auth = base64.b64encode(b"ci:secret").decode()
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    pulled = pull_release(f"{url}:1.0.0", tmp_path / "out", OPTIONS)
    assert files_of(Path(pulled.path)) == files_of(releases.signed)
