"""A release as a CNCF ModelPack artifact: the OCI manifest and model config k2trt pushes.

Upstream-defined (github.com/modelpack/model-spec at commit
d78bf3231b4f26196c4a955e1007ccc47e19a77c: docs/spec.md, docs/config.md, docs/annotations.md,
specs-go/v1/mediatype.go, annotations.go, config.go, schema/config-schema.json):
- the manifest's mediaType is the OCI image manifest's, its artifactType
  `application/vnd.cncf.model.manifest.v1+json`, its config `...model.config.v1+json`;
- layers: `application/vnd.cncf.model.{weight,weight.config,doc,code}.v1.raw` ("unarchived,
  uncompressed" files), each file's path in the `org.cncf.model.filepath` annotation;
- the config: `descriptor`, `config`, `modelfs` (type "layers", diffIds: "hash of the layer's
  uncompressed" content; for a raw layer that is the layer digest itself), no other keys
  (additionalProperties: false), createdAt RFC 3339.

k2trt's own choices: one raw layer per release file (its digest is the file's sha256, as in
release.json), release.json and release.sig as layers too; which file gets which media type
(`media_type`, after modctl's name patterns: weights are safetensors under checkpoint/weights,
scripts are code, notes/reports/release metadata are docs, every other file is configuration
of the model); the manifest annotations `k2trt.release.{name,version,id}` (plus the OCI
standard `org.opencontainers.image.{version,created}`).

>>> media_type("checkpoint/weights/model-1-of-3.safetensors")
'application/vnd.cncf.model.weight.v1.raw'
>>> media_type("triton/launch/serve-docker.sh")
'application/vnd.cncf.model.code.v1.raw'
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from k2trt.errors import K2Error
from k2trt.release.store import Entry, LocalRelease, version_tag

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
FILEPATH = "org.cncf.model.filepath"

# ours (OCI asks annotation keys to be namespaced; k2trt owns no domain, hence the bare prefix)
NAME = "k2trt.release.name"
VERSION = "k2trt.release.version"
RELEASE_ID = "k2trt.release.id"

_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf"}
_CODE_SUFFIXES = {".py", ".sh", ".sbatch"}
_DOC_SUFFIXES = {".md", ".txt"}
# about the release rather than the model: documentation of it
_RELEASE_DOCS = {"release.json", "release.sig", "stages.json"}


def media_type(path: str) -> str:
    """The ModelPack layer media type of a release file (see the module docstring)."""
    p = PurePosixPath(path)
    if p.parts[:2] == ("checkpoint", "weights") and p.suffix in _WEIGHT_SUFFIXES:
        return WEIGHT
    if p.suffix in _CODE_SUFFIXES or p.name == "Dockerfile":
        return CODE
    if p.suffix in _DOC_SUFFIXES or path in _RELEASE_DOCS or p.parts[0] == "gates":
        return DOC
    return WEIGHT_CONFIG


def layer(entry: Entry) -> dict[str, Any]:
    if entry.sha256 is None:
        raise ValueError(f"{entry.path}: a layer needs its digest")
    return {
        "mediaType": media_type(entry.path),
        "digest": f"sha256:{entry.sha256}",
        "size": entry.bytes,
        "annotations": {FILEPATH: entry.path},
    }


def param_size(parameters: int) -> str:
    """ModelPack's `<count><scale-prefix>` with at most one decimal.

    >>> param_size(1_026_000_000_000), param_size(3_963_912), param_size(6_700_000_000)
    ('1T', '4M', '6.7B')
    """
    for letter, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if parameters >= scale:
            return f"{parameters / scale:.1f}".removesuffix(".0") + letter
    return str(parameters)


def model_config(manifest: dict[str, Any], layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The `application/vnd.cncf.model.config.v1+json` blob, from release.json facts only."""
    source = manifest.get("source", {})
    hf = source.get("hf") or {}
    descriptor: dict[str, Any] = {
        "name": manifest["name"],
        "version": manifest["version"],
        "family": "kimi-k2",
    }
    if manifest.get("created"):
        descriptor["createdAt"] = manifest["created"]
    if hf.get("repo"):
        descriptor["sourceURL"] = f"https://huggingface.co/{hf['repo']}"
    if hf.get("revision"):
        descriptor["revision"] = hf["revision"]
    config: dict[str, Any] = {"architecture": "transformer"}
    if manifest["checkpoint"].get("included"):
        config["format"] = "safetensors"  # only when the weights travel in the artifact
    if source.get("parameters"):
        config["paramSize"] = param_size(int(source["parameters"]))
    capabilities: dict[str, Any] = {"inputTypes": ["text"], "outputTypes": ["text"]}
    if manifest.get("serving", {}).get("parser"):
        capabilities["toolUsage"] = True
    config["capabilities"] = capabilities
    diff_ids = [item["digest"] for item in layers]  # raw layers: uncompressed == the blob
    modelfs = {"type": "layers", "diffIds": diff_ids}
    return {"descriptor": descriptor, "config": config, "modelfs": modelfs}


def canonical(data: Any) -> bytes:
    """Deterministic JSON bytes: the same release always gives the same digests."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Artifact:
    config: bytes
    manifest: bytes

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def build_artifact(release: LocalRelease) -> Artifact:
    """Config and manifest for a release: every file, release.sig, then release.json."""
    layers = [layer(e) for e in [*release.entries, release.index]]
    config = canonical(model_config(release.manifest, layers))
    annotations = {
        NAME: release.name,
        VERSION: release.version,
        RELEASE_ID: release.id,
        "org.opencontainers.image.version": release.version,
    }
    if release.manifest.get("created"):
        annotations["org.opencontainers.image.created"] = release.manifest["created"]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": CONFIG,
            "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
            "size": len(config),
        },
        "layers": layers,
        "annotations": annotations,
    }
    return Artifact(config, canonical(manifest))


@dataclass(frozen=True)
class Found:
    """What a pulled manifest says about the release it carries."""

    name: str
    version: str
    id: str
    layers: dict[str, dict[str, Any]]  # by file path


def read_artifact(data: bytes, where: str) -> Found:
    """Parse a manifest pulled from a registry; one-line errors for anything not ours."""
    try:
        manifest = json.loads(data)
        annotations = manifest.get("annotations") or {}
        layers = {item["annotations"][FILEPATH]: item for item in manifest["layers"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise K2Error(f"{where}: not a ModelPack manifest with file paths ({exc})") from exc
    if manifest.get("artifactType") != ARTIFACT_TYPE or NAME not in annotations:
        raise K2Error(
            f"{where}: not a k2trt release (artifactType {manifest.get('artifactType')!r}, "
            f"expected {ARTIFACT_TYPE} with a {NAME} annotation)"
        )
    if "release.json" not in layers:
        raise K2Error(f"{where}: the artifact has no release.json layer")
    return Found(annotations[NAME], annotations[VERSION], annotations[RELEASE_ID], layers)


def is_version_tag(tag: str, found: Found) -> bool:
    """A version's own tag (a channel is any other tag on the same manifest)."""
    return tag == version_tag(found.version)
