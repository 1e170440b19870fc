"""A served model repository on disk, as a rollout changes it: version directories, configs.

    repo/
      .k2trt-deploy.lock          held while a rollout runs (a file: Triton loads directories)
      chat/config.pbtxt           version_policy specific { versions: [N] }, records per version
      chat/N/                     model.py, __pycache__ (empty file), k2trt-release.json
      preprocessing/N/            ... and k2trt-model-files/ (this version's tokenizer, template)
      k2trt-canary/               only while a rollout tests version N through it

Configs are read and written as Triton's own protobuf message (`model_config_pb2`), so a
rewrite changes exactly the fields asked for: a config that differs from the loaded one only
in `version_policy` lets Triton keep the versions it still names running in place.
Version directories are written aside (`.N.partial`) and renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2

from k2trt.errors import K2Error
from k2trt.fsutil import atomic_dir, dump_json, write_text_atomic
from k2trt.triton_repo import spec

CONFIG = "config.pbtxt"
CANARY = "k2trt-canary"  # chat's next version under another name, for the smoke gate
LOCK = ".k2trt-deploy.lock"


def versions_on_disk(model_dir: Path) -> list[int]:
    """The numbered version directories of a model, ascending (as Triton counts them).

    >>> versions_on_disk(Path("/nonexistent"))
    []
    """
    if not model_dir.is_dir():
        return []
    names = [p.name for p in model_dir.iterdir() if p.is_dir()]
    return sorted(int(n) for n in names if n.isdigit() and (n == "0" or not n.startswith("0")))


def next_version(repo: Path, models: tuple[str, ...], known: Iterable[int] = ()) -> int:
    """One more than any version directory of `models` (and of a leftover canary) and any
    version number in `known` (what the server remembers: a number is never reused, so one
    always means the same release in logs and in the index).

    >>> next_version(Path("/nonexistent"), ("chat",), known=[1, 3])
    4
    """
    found = [v for m in (*models, CANARY) for v in versions_on_disk(repo / m)]
    return max([*found, *known], default=0) + 1


def read_config(path: Path) -> Any:
    """A config.pbtxt as Triton's ModelConfig message; K2Error naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise K2Error(f"cannot read the model config: {exc}", path=path) from exc
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise K2Error(f"not a Triton model config: {exc}", path=path) from exc


def config_text(config: Any) -> str:
    """The text form Triton reads (fields in schema order, map keys sorted)."""
    return str(text_format.MessageToString(config))


def write_config(model_dir: Path, config: Any) -> None:
    """Replace the model's config.pbtxt atomically."""
    write_text_atomic(model_dir / CONFIG, config_text(config))


def pinned(config: Any, versions: list[int] | tuple[int, ...]) -> Any:
    """A copy of `config` serving exactly `versions` (version_policy specific).

    >>> c = pinned(model_config_pb2.ModelConfig(name="m"), [2, 1])
    >>> list(c.version_policy.specific.versions)
    [1, 2]
    """
    out = model_config_pb2.ModelConfig()
    out.CopyFrom(config)
    out.ClearField("version_policy")
    out.version_policy.specific.versions.extend(sorted(set(versions)))
    return out


def with_parameters(config: Any, params: Mapping[str, str], drop_prefix: str = "") -> Any:
    """A copy of `config` with `params` set (and every parameter starting with `drop_prefix`
    removed first, when given)."""
    out = model_config_pb2.ModelConfig()
    out.CopyFrom(config)
    for key in [k for k in out.parameters if drop_prefix and k.startswith(drop_prefix)]:
        del out.parameters[key]
    for key, value in params.items():
        out.parameters[key].string_value = value
    return out


def renamed(config: Any, name: str) -> Any:
    """A copy of `config` for a model called `name`."""
    out = model_config_pb2.ModelConfig()
    out.CopyFrom(config)
    out.name = name
    return out


def same_apart_from_versions(a: Any, b: Any) -> list[str]:
    """The top-level fields in which two configs differ, version_policy and the release
    records (spec.P_RELEASE parameters) aside; [] when a rollout may swap one for the other."""
    x, y = (
        json_format.MessageToDict(
            with_parameters(pinned(c, [1]), {}, spec.P_RELEASE), preserving_proto_field_name=True
        )
        for c in (a, b)
    )
    return sorted(f for f in set(x) | set(y) if x.get(f) != y.get(f))


def write_model_py(version: Path, model_py: bytes) -> None:
    """A version directory's model.py, and the empty file that keeps Python from writing a
    bytecode cache there (see spec.BYTECODE_BLOCKER)."""
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_bytes(model_py)
    (version / spec.BYTECODE_BLOCKER).write_bytes(b"")


def write_version(
    model_dir: Path,
    version: int,
    model_py: bytes,
    record: Mapping[str, Any],
    files: Path | None = None,
) -> Path:
    """MODEL/VERSION: model.py, the bytecode-cache blocker, the release record and (for the
    models that read them) a copy of `files` as k2trt-model-files/; written aside first."""
    dest = model_dir / str(version)
    if dest.exists():
        raise K2Error("version directory already exists", path=dest)
    with atomic_dir(dest) as tmp:
        write_model_py(tmp, model_py)
        (tmp / spec.RELEASE_RECORD).write_text(dump_json(record), encoding="utf-8")
        if files is not None:
            shutil.copytree(files, tmp / spec.MODEL_FILES_DIR)
    return dest


def remove_version(model_dir: Path, version: int) -> None:
    """Delete MODEL/VERSION (renamed aside first, so Triton never sees half of it)."""
    path = model_dir / str(version)
    if not path.exists():
        return
    aside = model_dir / f".{version}.removed"
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def bytecode_cache_written(version_dir: Path) -> bool:
    """Python wrote a bytecode cache into this version (a repository packaged before the
    blocker): Triton then reloads the version once, in a new process, at the next load.

    >>> bytecode_cache_written(Path("/nonexistent"))
    False
    """
    return (version_dir / spec.BYTECODE_BLOCKER).is_dir()


@contextlib.contextmanager
def deploy_lock(repo: Path) -> Iterator[None]:
    """Hold REPO/.k2trt-deploy.lock (one rollout at a time); K2Error when another holds it."""
    path = repo / LOCK
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise K2Error("another rollout holds this repository's lock", path=path) from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
