"""The source checkpoint's own manifest (`k2trt inspect --hash`): hashes convert need not take.

An entry whose file still has the recorded size and mtime is trusted: its sha256 is reused and
the file is not read for it (what `build` and `release` decide for their pins, and what git and
rsync do). An entry with the same size but a moved or unrecorded mtime is only a claim: the
file is hashed on the way and a different sha256 is refused as a modified or corrupt shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from k2trt.checkpoint.manifest import MANIFEST_FORMAT, MANIFEST_NAME, FileHash
from k2trt.errors import K2Error
from k2trt.fsutil import read_json


@dataclass(frozen=True)
class SourceHashes:
    """What the source's manifest says, split by how far it can be believed."""

    trusted: dict[str, FileHash] = field(default_factory=dict)  # size and mtime match
    claimed: dict[str, FileHash] = field(default_factory=dict)  # size matches, mtime does not

    def check(self, digest: FileHash | None, root: Path) -> FileHash | None:
        """A hash taken on the way, refused when the manifest lists another for that file."""
        if digest is None:
            return None
        listed = self.trusted.get(digest.name) or self.claimed.get(digest.name)
        if listed and listed.sha256 != digest.sha256:
            raise K2Error(
                f"sha256 {digest.sha256[:16]}... differs from the source manifest's "
                f"{listed.sha256[:16]}... (shard modified or corrupt)",
                path=root / digest.name,
            )
        return digest


def read_source_hashes(src: Path) -> SourceHashes:
    """SRC's manifest entries for top-level files that still exist with the recorded size."""
    path = src / MANIFEST_NAME
    if not path.is_file():
        return SourceHashes()
    data = read_json(path, "manifest")
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return SourceHashes()
    files = data.get("files")
    if not isinstance(files, dict):
        return SourceHashes()
    out = SourceHashes()
    for name, entry in files.items():
        target = src / name
        if not (isinstance(entry, dict) and "/" not in name and target.is_file()):
            continue
        size, sha, mtime = entry.get("bytes"), entry.get("sha256"), entry.get("mtime_ns")
        stat = target.stat()
        if size != stat.st_size or not (isinstance(sha, str) and len(sha) == 64):
            continue
        where = out.trusted if mtime == stat.st_mtime_ns else out.claimed
        where[name] = FileHash(name, size, sha)
    return out


def source_manifest(src: Path) -> dict[str, FileHash]:
    """The trusted hashes only (size and mtime as recorded): files that need no reading.

    >>> source_manifest(Path("Kimi-K2-Instruct"))  # doctest: +SKIP
    {'config.json': FileHash(name='config.json', bytes=3398, sha256='...'), ...}
    """
    return read_source_hashes(src).trusted
