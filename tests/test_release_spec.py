"""release.yaml: typed, unknown fields and wrong types refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from k2trt.errors import K2Error
from k2trt.release.containers import parse_image, trtllm_version_of
from k2trt.release.spec import ReleaseSpec, resolve
from release_fixtures import spec_data


def parse(**overrides: Any) -> ReleaseSpec:
    return ReleaseSpec.from_mapping(spec_data(**overrides))


def refused(message: str, **overrides: Any) -> None:
    with pytest.raises(K2Error) as err:
        parse(**overrides)
    assert str(err.value) == message


def test_defaults_and_nested_records() -> None:
    spec = parse(
        convert={"dtype": "bf16", "layers": 2}, gates={"eval": {"command": ["x", "{out}"]}}
    )
    assert spec.convert.dtype == "bf16" and spec.convert.layers == 2
    assert spec.gates.smoke.enabled and spec.gates.smoke.engine == "auto"
    assert spec.gates.eval is not None and spec.gates.eval.command == ("x", "{out}")
    assert spec.gates.perf is None
    assert spec.build.gpus == "H100x1" and spec.build.context == 4096
    assert spec.checkpoint.hf is not None and spec.checkpoint.hf.revision == "r1"
    assert spec.install_dir() == "/opt/k2trt/releases/kimi-k2-tiny/1.0.0"
    assert spec.checkpoint_path() == "/models/kimi-k2-tiny/prepared"


def test_unknown_fields_are_named_at_every_level() -> None:
    refused("spec: unknown field 'gate' (did you mean 'gates'?)", gate={})
    refused(
        "spec.gates.smoke: unknown field 'engin' (did you mean 'engine'?)",
        gates={"smoke": {"engin": "auto"}},
    )
    refused(
        "spec.build: unknown field 'contxt' (did you mean 'context'?)",
        build={"gpus": "H100x1", "contxt": 1},
    )


def test_wrong_types_are_named() -> None:
    refused(
        "spec.build.context: expected int, got str '4096'",
        build={"gpus": "H100x1", "context": "4096"},
    )
    refused("spec.convert.drop_extra: expected bool, got str 'yes'", convert={"drop_extra": "yes"})
    refused(
        "spec.gates.perf.min.output_token_throughput: expected float, got str 'fast'",
        gates={"perf": {"min": {"output_token_throughput": "fast"}}},
    )
    refused("spec.checkpoint: expected a mapping, got str 'tiny'", checkpoint="tiny")


def test_required_fields() -> None:
    data = spec_data()
    del data["checkpoint"]
    with pytest.raises(K2Error, match=r"^spec: field 'checkpoint' is required$"):
        ReleaseSpec.from_mapping(data)
    refused("spec.build: field 'gpus' is required (e.g. gpus: H200x8)", build={"context": 1})


@pytest.mark.parametrize("version", ["1.0.0", "0.0.0-ci", "2.10.3-rc.1+build.7"])
def test_semver_accepted(version: str) -> None:
    assert parse(version=version).version == version


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-"])
def test_semver_refused(version: str) -> None:
    refused(
        f"spec.version: expected a semantic version like 1.2.0, got {version!r}", version=version
    )


def test_values_checked_by_field() -> None:
    refused(
        "spec.name: expected lowercase letters, digits and . _ -, got 'Kimi K2'", name="Kimi K2"
    )
    refused(
        "spec.checkpoint.sha256.a.bin: expected 64 lowercase hex digits, got 'abc'",
        checkpoint={"path": "tiny", "sha256": {"a.bin": "abc"}},
    )
    refused("spec.convert.dtype: expected fp8 or bf16, got 'fp4'", convert={"dtype": "fp4"})
    refused(
        "spec.gates.smoke.engine: expected one of auto, cpu-standin, trtllm, got 'gpu'",
        gates={"smoke": {"engine": "gpu"}},
    )
    refused(
        "spec.package.container: digest must be sha256: and 64 hex digits, got 'sha256:12'",
        package={"container": "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3@sha256:12"},
    )


def test_container_digest_and_trtllm_table() -> None:
    digest = "sha256:" + "ab" * 32
    ref = parse_image(f"nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3@{digest}")
    assert (ref.repo, ref.tag, ref.digest, ref.pinned) == (
        "nvcr.io/nvidia/tritonserver",
        "25.10-trtllm-python-py3",
        digest,
        True,
    )
    assert trtllm_version_of(ref) == "1.0.0"
    assert trtllm_version_of(parse_image("nvcr.io/nvidia/tritonserver:25.12-py3")) is None
    assert (
        trtllm_version_of(parse_image("registry.local:5000/my/triton:25.12-trtllm-python-py3"))
        is None
    )
    assert parse_image("localhost:5000/img").tag is None


def test_spec_paths_are_relative_to_the_spec_file(tmp_path: Path) -> None:
    assert resolve(tmp_path, "tiny") == tmp_path / "tiny"
    assert resolve(tmp_path, "/abs/tiny") == Path("/abs/tiny")


def test_load_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "release.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(K2Error, match=r"release.yaml: release spec is not valid YAML"):
        ReleaseSpec.load(bad)
    with pytest.raises(K2Error, match=r"nope.yaml: cannot read the release spec"):
        ReleaseSpec.load(tmp_path / "nope.yaml")
    bad.write_text(
        "name: k2\nversion: 1.0.0\ncheckpoint: {path: x}\nbuild: {gpus: H100x1}\nextra: 1\n"
    )
    with pytest.raises(K2Error, match=r"release.yaml: unknown field 'extra'"):
        ReleaseSpec.load(bad)
