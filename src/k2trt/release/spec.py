"""`release.yaml`: what a release is built from, as typed data.

    name: kimi-k2                      # lowercase: a registry repository name
    version: 1.4.0                     # semver
    checkpoint:
      path: /models/Kimi-K2-Instruct   # relative paths are relative to this file
      hf: {repo: moonshotai/Kimi-K2-Instruct, revision: 0123abcd}   # provenance only
      sha256: {model-1-of-61.safetensors: 9f2c...}                  # expected; checked
    convert: {dtype: fp8}              # `k2trt convert` / `k2trt slice` options
    build: {gpus: H200x16, context: 131072, concurrency: 8}        # a `k2trt build` spec
    package:
      container: nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3@sha256:...
      checkpoint_path: /models/kimi-k2/prepared   # where serving nodes find the weights
    gates:
      smoke: {engine: auto}
      eval: {command: [...], min: {schema_accuracy: 0.98}}
      perf: {requests: 200, concurrency: 16, min: {output_token_throughput: 2000}}
    previous: 1.3.0                    # a version beside this one, or a release directory

Unknown fields and wrong types are refused by name (`k2trt.typed`).

>>> spec = ReleaseSpec.from_mapping({"name": "k2", "version": "1.0.0",
...     "checkpoint": {"path": "ckpt"}, "build": {"gpus": "H200x8"}})
>>> spec.gates.smoke.engine, spec.convert.dtype
('auto', 'fp8')
>>> ReleaseSpec.from_mapping({"name": "k2", "version": "1.0", "checkpoint": {"path": "c"},
...     "build": {"gpus": "H200x8"}})
Traceback (most recent call last):
k2trt.errors.K2Error: spec.version: expected a semantic version like 1.2.0, got '1.0'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2trt.build.spec import BuildSpec
from k2trt.errors import K2Error
from k2trt.release.containers import parse_image
from k2trt.triton_repo import launch
from k2trt.typed import from_mapping, load_yaml, to_plain

# semver.org's grammar: MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
SMOKE_ENGINES = ("auto", "cpu-standin", "trtllm")
DEFAULT_INSTALL_DIR = "/opt/k2trt/releases/{name}/{version}"
DEFAULT_CHECKPOINT_PATH = "/models/{name}/prepared"


@dataclass(frozen=True)
class HfSource:
    """Where the checkpoint came from (recorded, never downloaded)."""

    repo: str
    revision: str


@dataclass(frozen=True)
class CheckpointSpec:
    path: str
    hf: HfSource | None = None
    sha256: Mapping[str, str] = field(default_factory=dict)  # file name -> expected sha256


@dataclass(frozen=True)
class ConvertSpec:
    """`k2trt convert` options; `layers`/`experts` make a slice."""

    dtype: str = "fp8"
    drop_extra: bool = False  # drop rotary_emb.inv_freq (kept by default: shards linked)
    kv_cache_fp8: bool = False
    layers: int | None = None
    experts: int | None = None


@dataclass(frozen=True)
class PackageSpec:
    container: str = launch.CONTAINER
    trtllm_version: str | None = None  # default: what the container ships (known table)
    checkpoint_path: str | None = None  # model.yaml `model` on the serving nodes
    install_dir: str | None = None  # where the release directory sits on the serving nodes


@dataclass(frozen=True)
class SmokeGate:
    enabled: bool = True
    engine: str = "auto"  # auto: trtllm where it runs, else the CPU stand-in
    checkpoint: str | None = None  # CPU stand-in: a small checkpoint to run instead
    timeout_s: float = 300.0


@dataclass(frozen=True)
class EvalGate:
    """A tool-call evaluation hook: `command` runs against the served API and writes a
    K2-Vendor-Verifier-style summary JSON; figures are checked against min/max."""

    command: tuple[str, ...]
    min: Mapping[str, float] = field(default_factory=dict)
    max: Mapping[str, float] = field(default_factory=dict)
    timeout_s: float = 3600.0


@dataclass(frozen=True)
class PerfGate:
    """An aiperf profile of the served API (GPU nodes only); zero errored requests always."""

    requests: int = 100
    concurrency: int = 8
    input_tokens: int = 1024
    output_tokens: int = 256
    seed: int = 0
    min: Mapping[str, float] = field(default_factory=dict)
    max: Mapping[str, float] = field(default_factory=dict)
    timeout_s: float = 3600.0


@dataclass(frozen=True)
class Gates:
    smoke: SmokeGate = field(default_factory=SmokeGate)
    eval: EvalGate | None = None
    perf: PerfGate | None = None


@dataclass(frozen=True)
class ReleaseSpec:
    name: str
    version: str
    checkpoint: CheckpointSpec
    build: BuildSpec
    convert: ConvertSpec = field(default_factory=ConvertSpec)
    package: PackageSpec = field(default_factory=PackageSpec)
    gates: Gates = field(default_factory=Gates)
    previous: str | None = None

    @classmethod
    def from_mapping(cls, data: object, where: str = "spec") -> ReleaseSpec:
        spec = from_mapping(cls, data, where)
        spec.check(where)
        return spec

    @classmethod
    def load(cls, path: Path) -> ReleaseSpec:
        return cls.from_mapping(load_yaml(path, "release spec"), where=str(path))

    def check(self, where: str) -> None:
        """Value checks beyond types, each naming its field."""
        if not NAME.match(self.name):
            raise K2Error(
                f"{where}.name: expected lowercase letters, digits and . _ -, got {self.name!r}"
            )
        if not SEMVER.match(self.version):
            raise K2Error(
                f"{where}.version: expected a semantic version like 1.2.0, got {self.version!r}"
            )
        for file, digest in self.checkpoint.sha256.items():
            if not SHA256.match(digest):
                raise K2Error(
                    f"{where}.checkpoint.sha256.{file}: expected 64 lowercase hex "
                    f"digits, got {digest!r}"
                )
        if self.convert.dtype not in ("fp8", "bf16"):
            raise K2Error(
                f"{where}.convert.dtype: expected fp8 or bf16, got {self.convert.dtype!r}"
            )
        parse_image(self.package.container, f"{where}.package.container")
        if self.gates.smoke.engine not in SMOKE_ENGINES:
            raise K2Error(
                f"{where}.gates.smoke.engine: expected one of "
                f"{', '.join(SMOKE_ENGINES)}, got {self.gates.smoke.engine!r}"
            )
        if self.gates.eval is not None and not self.gates.eval.command:
            raise K2Error(f"{where}.gates.eval.command: expected a command (a list of words)")

    def to_dict(self) -> dict[str, Any]:
        """Plain data, keys sorted (what the release keeps as spec.yaml)."""
        return dict(to_plain(self))

    def install_dir(self) -> str:
        return (self.package.install_dir or DEFAULT_INSTALL_DIR).format(
            name=self.name, version=self.version
        )

    def checkpoint_path(self) -> str:
        return (self.package.checkpoint_path or DEFAULT_CHECKPOINT_PATH).format(
            name=self.name, version=self.version
        )


def resolve(base: Path, path: str) -> Path:
    """A spec path: absolute as written, or relative to the spec file's directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)
