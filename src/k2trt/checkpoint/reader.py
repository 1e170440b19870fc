"""A checkpoint directory opened through its index; shard headers checked against it both ways."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2trt.checkpoint.safetensors import LazyTensor, ShardFiles, TensorInfo, read_header
from k2trt.errors import K2Error, show
from k2trt.fsutil import MAX_JSON_BYTES, is_inside, read_json
from k2trt.models.config import ModelConfig

INDEX_NAME = "model.safetensors.index.json"
SINGLE_SHARD = "model.safetensors"
MAX_INDEX_BYTES = MAX_JSON_BYTES  # Kimi K2's: ~15 MB by our estimate (139,644 entries)
NAME_MAX = 255  # bytes per path component where pathconf cannot say (ext4, xfs, btrfs)


@dataclass(frozen=True)
class Index:
    """`model.safetensors.index.json`: tensor name -> shard file name, plus metadata."""

    path: Path
    weight_map: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def _no_duplicate_keys(path: Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise K2Error(f"tensor {show(key)} is listed twice", path=path)
            seen[key] = value
        return seen

    return hook


def load_index(path: Path, root: Path | None = None) -> Index:
    """Parse an index file; every problem is one line naming the file and the entry."""
    data = read_json(
        path, "index", root=root, limit=MAX_INDEX_BYTES, pairs_hook=_no_duplicate_keys(path)
    )
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise K2Error("index must be a JSON object with a 'weight_map' object", path=path)
    weight_map = data["weight_map"]
    if not weight_map:
        raise K2Error("index 'weight_map' is empty", path=path)
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise K2Error(
                f"tensor {show(name)}: shard must be a file name, got {show(shard)}", path=path
            )
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise K2Error(f"index 'metadata' must be an object, got {show(metadata)}", path=path)
    return Index(path, dict(weight_map), metadata)


def _name_problem(root: Path, name: str) -> str | None:
    """What makes `name` unusable as a shard file name inside `root`, or None."""
    if "\0" in name:
        return "contains a NUL byte"
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        return "is an absolute path; shards must be inside the checkpoint"
    if name.endswith(("/", "\\")):
        return "ends in a path separator; a shard is a file"
    parts = Path(name).parts
    if not parts:
        return "does not name a file"
    if ".." in parts:
        return "points outside the checkpoint directory"
    try:
        name_max = os.pathconf(root, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = NAME_MAX
    longest = max(len(part.encode("utf-8", "surrogateescape")) for part in parts)
    if longest > name_max:
        return f"has a {longest}-byte name part; the filesystem allows {name_max}"
    return None


def resolve_shard(root: Path, name: str, index_path: Path) -> Path:
    """The shard's path, refusing bad names (NUL, absolute, `..`, trailing `/`, too long),
    symlinks out of `root`, absences and anything but a regular file."""
    where = f"shard {show(name)}"
    problem = _name_problem(root, name)
    if problem:
        raise K2Error(f"{where} {problem}", path=index_path)
    path = root / name
    if not is_inside(path, root):
        raise K2Error(
            f"{where} resolves outside the checkpoint directory (symlink?)", path=index_path
        )
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise K2Error(f"{where} is missing", path=index_path) from None
    except OSError as exc:
        raise K2Error(f"{where} cannot be opened: {exc.strerror or exc}", path=index_path) from None
    if not stat.S_ISREG(mode):
        raise K2Error(f"{where} is not a regular file", path=index_path)
    return path


class Checkpoint:
    """An HF checkpoint directory: config, index, shard headers; tensors read lazily.

    >>> with Checkpoint.open(Path("Kimi-K2-Instruct")) as ckpt:  # doctest: +SKIP
    ...     w = ckpt.tensor("model.norm.weight").torch()
    """

    def __init__(
        self,
        root: Path,
        config: ModelConfig,
        index: Index | None,
        tensors: dict[str, TensorInfo],
        shard_meta: dict[str, dict[str, str]],
    ) -> None:
        self.root = root
        self.config = config
        self.index = index
        self.infos = tensors
        self.shard_meta = shard_meta
        self._files = ShardFiles()

    @classmethod
    def open(cls, root: Path, *, require_weights: bool = False) -> Checkpoint:
        """Open a checkpoint; a directory with only config.json opens with no tensors."""
        if not root.is_dir():
            raise K2Error("not a checkpoint directory", path=root)
        config = ModelConfig.load(root)
        index = _find_index(root)
        if index is None:
            if require_weights:
                raise K2Error(f"no weights: neither {INDEX_NAME} nor {SINGLE_SHARD}", path=root)
            return cls(root, config, None, {}, {})
        tensors, meta = _read_shards(root, index)
        return cls(root, config, index, tensors, meta)

    @property
    def has_weights(self) -> bool:
        return self.index is not None

    @property
    def shard_paths(self) -> list[Path]:
        return [self.root / s for s in self.index.shards] if self.index else []

    def names(self) -> list[str]:
        return list(self.infos)

    def tensor(self, name: str) -> LazyTensor:
        info = self.infos.get(name)
        if info is None:
            raise K2Error(f"tensor {show(name)} is not in the checkpoint", path=self.root)
        return LazyTensor(info, self._files)

    def __iter__(self) -> Iterator[LazyTensor]:
        for info in self.infos.values():
            yield LazyTensor(info, self._files)

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _find_index(root: Path) -> Index | None:
    index_path = root / INDEX_NAME
    single = root / SINGLE_SHARD
    if os.path.lexists(index_path):
        index = load_index(index_path, root)
        if os.path.lexists(single) and index.shards != [SINGLE_SHARD]:
            # transformers checks for model.safetensors before the index (modeling_utils.py,
            # transformers 5.25.0): it would load that file and never read the index.
            raise K2Error(
                f"stray {SINGLE_SHARD} beside {INDEX_NAME}, which does not list it alone: "
                f"transformers would load it instead of the indexed shards; remove one of them",
                path=single,
            )
        return index
    if os.path.lexists(single):
        tensors, _ = read_header(single, root)
        return Index(single, dict.fromkeys(tensors, SINGLE_SHARD))
    if any(root.glob("*.safetensors")):
        raise K2Error("index file is missing but shards are present", path=index_path)
    return None


def _read_shards(
    root: Path, index: Index
) -> tuple[dict[str, TensorInfo], dict[str, dict[str, str]]]:
    """Read every shard header once and check the index against them, both ways."""
    by_shard: dict[str, list[str]] = {}
    for name, shard in index.weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    found: dict[str, TensorInfo] = {}
    meta: dict[str, dict[str, str]] = {}
    for shard in sorted(by_shard):
        path = resolve_shard(root, shard, index.path)
        header, meta[shard] = read_header(path, root)
        for name, info in header.items():
            if name in found:
                raise K2Error(
                    f"tensor {show(name)} is stored in both {found[name].shard.name} and {shard}",
                    path=path,
                )
            if index.weight_map.get(name) != shard:
                listed = index.weight_map.get(name)
                where = (
                    f"the index maps it to {show(listed)}"
                    if listed
                    else "the index does not list it"
                )
                raise K2Error(f"tensor {show(name)} is in this shard but {where}", path=path)
            found[name] = info
        missing = [n for n in by_shard[shard] if n not in header]
        if missing:
            raise K2Error(
                f"tensor {show(missing[0])} is listed in the index but not in this shard"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                path=path,
            )
    ordered = {name: found[name] for name in index.weight_map}
    return ordered, meta
