"""`k2trt release verify`: is this release intact, signed, and runnable on this machine?

Checks, each problem one line (expected vs found):
- release.json: readable, its id recomputes, every listed file present with its size and
  sha256, nothing unlisted (release.sig aside);
- the signature (model-signing), when `public_key` names the key to trust;
- the weights (`weights`: any copy of the prepared checkpoint) against the release's manifest;
- compatibility: the GPUs (`nvidia-smi` when present, else `gpus`) against the release's
  target (SKU, and enough of them: this node's share when nvidia-smi sees one node), and
  the TensorRT-LLM version (`tensorrt_llm.__version__` when it imports, else
  `trtllm_version`) against the one the release's container ships.

Like NIM's profile listing, the outcome is `compatible`, `incompatible` (with the reasons) or
`not checked` (nothing said what this machine has).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2trt.build.gpus import CATALOG, parse_gpus
from k2trt.checkpoint.manifest import sha256_file
from k2trt.errors import K2Error
from k2trt.fsutil import files_under, read_json
from k2trt.release.assemble import FORMAT, RELEASE_JSON, SIGNATURE, UNHASHED, release_id

# Longest names first: "H200" must not be read as "H20".
_SKU = re.compile(r"\b(" + "|".join(sorted(CATALOG, key=len, reverse=True)) + r")\b")


@dataclass
class VerifyResult:
    release: str
    id: str
    checked: list[str] = field(default_factory=list)  # what was verified, for people
    findings: list[str] = field(default_factory=list)
    compatibility: str = "not checked"

    @property
    def ok(self) -> bool:
        return not self.findings


def load_manifest(release: Path) -> dict[str, Any]:
    data = read_json(release / RELEASE_JSON, "release manifest")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise K2Error(
            f"not a k2trt release (expected format {FORMAT})", path=release / RELEASE_JSON
        )
    for key in ("id", "name", "version", "files", "target", "versions", "checkpoint"):
        if key not in data:
            raise K2Error(f"release manifest lacks '{key}'", path=release / RELEASE_JSON)
    return data


def check_files(release: Path, manifest: dict[str, Any]) -> list[str]:
    """Listed files present and unchanged; nothing unlisted; the id recomputes."""
    findings = []
    if release_id(manifest) != manifest["id"]:
        findings.append(
            f"{release / RELEASE_JSON}: id {manifest['id'][:19]}... does not match "
            f"its content ({release_id(manifest)[:19]}...): the manifest was edited"
        )
    return findings + check_tree(release, manifest["files"])


def check_tree(release: Path, files: dict[str, Any], under: str = "") -> list[str]:
    """The release's files under the prefix `under` ("": all of them): every listed one
    present and unchanged, nothing unlisted (release.json and release.sig aside)."""
    listed = {n: f for n, f in files.items() if n.startswith(under)}
    findings = check_against(release, listed, "missing (listed in release.json)")
    for path in files_under(release / under if under else release):
        name = path.relative_to(release).as_posix()
        if name not in listed and name not in UNHASHED:
            findings.append(f"{path}: not part of the release (not in release.json)")
    return findings


def check_weights(release: Path, manifest: dict[str, Any], weights: Path) -> list[str]:
    """A copy of the prepared checkpoint against the release's checkpoint manifest."""
    if not weights.is_dir():
        raise K2Error("--weights: not a directory", path=weights)
    data = read_json(release / manifest["checkpoint"]["manifest"], "checkpoint manifest")
    return check_against(weights, data["files"], "missing from the weights")


def check_against(root: Path, files: dict[str, Any], missing: str) -> list[str]:
    """Each of `files` ({name: {bytes, sha256}}) under `root`: present, size, sha256."""
    findings = []
    for name, want in sorted(files.items()):
        path = root / name
        if not path.is_file():
            findings.append(f"{path}: {missing}")
        elif path.stat().st_size != want["bytes"]:
            findings.append(f"{path}: {path.stat().st_size:,} bytes, expected {want['bytes']:,}")
        elif (got := sha256_file(path).sha256) != want["sha256"]:
            findings.append(f"{path}: sha256 {got[:16]}..., expected {want['sha256'][:16]}...")
    return findings


def detect_gpus() -> tuple[str, int] | None:
    """(SKU, count) of this node from nvidia-smi, or None when there is none to ask."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [m[1] if (m := _SKU.search(line)) else line.strip() for line in out.splitlines()]
    names = [n for n in names if n]
    if not names:
        return None
    sku, _ = Counter(names).most_common(1)[0]
    return sku, names.count(sku)


def detect_trtllm() -> str | None:
    """tensorrt_llm's version when it is installed (read without importing it: no CUDA init)."""
    try:
        return importlib.metadata.version("tensorrt_llm")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_gpus(target: dict[str, Any], found: tuple[str, int], per_node: bool) -> list[str]:
    """The release's GPUs against what this machine (or one node of it) has."""
    need = min(target["world_size"], target["gpus_per_node"]) if per_node else target["gpus"]
    scope = "per node" if per_node else "in all"
    want = f"{target['gpu']} x {need} {scope}"
    sku, count = found
    if sku != target["gpu"]:
        return [f"gpus: expected {want}, found {sku} x {count}"]
    if count < need:
        return [f"gpus: expected {want}, found {sku} x {count} (too few)"]
    return []


def check_trtllm(versions: dict[str, Any], found: str) -> list[str]:
    want = versions.get("tensorrt_llm")
    if want != found:
        return [f"tensorrt_llm: expected {want} (as in {versions.get('container')}), found {found}"]
    return []


def verify_release(
    release: Path,
    *,
    weights: Path | None = None,
    public_key: Path | None = None,
    gpus: str | None = None,
    trtllm_version: str | None = None,
) -> VerifyResult:
    """Every check above; K2Error only when the release cannot be read at all."""
    manifest = load_manifest(release)
    result = VerifyResult(str(release), manifest["id"])
    result.findings += check_files(release, manifest)
    result.checked.append(f"{len(manifest['files'])} files by sha256")
    if public_key is not None:
        from k2trt.release.sign import verify_signature

        result.findings += verify_signature(release, public_key)
        result.checked.append("signature")
    elif (release / SIGNATURE).exists():
        # hashes still hold; whoever needs the signature checked names the key to trust
        result.checked.append("signature present, not checked (no --public-key)")
    if weights is not None:
        result.findings += check_weights(release, manifest, weights)
        result.checked.append(f"weights in {weights}")
    _compatibility(result, manifest, gpus, trtllm_version)
    return result


def _compatibility(
    result: VerifyResult, manifest: dict[str, Any], gpus: str | None, trtllm: str | None
) -> None:
    found: list[str] = []
    checked = False
    node = detect_gpus()
    if node is not None or gpus is not None:
        have = node or _from_flag(gpus or "")
        found += check_gpus(manifest["target"], have, per_node=node is not None)
        result.checked.append(f"gpus ({'nvidia-smi' if node else '--gpus'}: {have[0]} x {have[1]})")
        checked = True
    version = detect_trtllm() or trtllm
    if version is not None:
        found += check_trtllm(manifest["versions"], version)
        result.checked.append(f"tensorrt_llm {version}")
        checked = True
    result.findings += found
    if checked:
        result.compatibility = "incompatible" if found else "compatible"


def _from_flag(text: str) -> tuple[str, int]:
    gpus = parse_gpus(text)
    return gpus.gpu.name, gpus.count
