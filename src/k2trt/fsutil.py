"""Atomic outputs (nothing at the final path looks complete until it is) and safe reads of the
small files we parse (regular file, inside its checkpoint, size-capped, depth-limited JSON)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from k2trt.errors import K2Error, show

# Small JSON files are read whole, so they are capped. Kimi K2's index (139,644 entries) is,
# by our estimate, ~15 MB; configs are a few KB. Callers pass tighter caps where they know better.
MAX_JSON_BYTES = 64 << 20
# Real files nest 4 levels at most. 128 is serde_json's default recursion limit, which the
# safetensors and tokenizers libraries parse with (`remaining_depth: 128` in src/de.rs,
# serde-rs/json@827a315, 1.0.150).
MAX_JSON_DEPTH = 128


def dump_json(data: Any) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp file in the same directory, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, dump_json(data))


@contextmanager
def atomic_dir(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Build a directory at a temp path beside `out`, then move it into place.

    Refuses an existing `out` unless `force`; on any failure the temp directory is removed and
    `out` is left as it was. A place we cannot write is a named error, not a traceback.

    >>> with atomic_dir(Path("ckpt")) as tmp:  # doctest: +SKIP
    ...     (tmp / "config.json").write_text("{}")
    """
    if out.exists() and not force:
        raise K2Error("output already exists (use --force to replace it)", path=out)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise K2Error(f"cannot create output directory: {exc.strerror or exc}", path=out) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    try:
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise K2Error(f"cannot move output into place: {exc.strerror or exc}", path=out) from None
    shutil.rmtree(old, ignore_errors=True)


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks resolved, lies under `root` (resolved the same way)."""
    real = os.path.realpath(path)
    top = os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def open_regular(path: Path, what: str, *, root: Path | None = None) -> tuple[int, int]:
    """(fd, size) of a regular file, opened without blocking; the caller closes the fd.

    Refuses, by name: a NUL in the name, a path that resolves outside `root` (when given),
    a missing file, symlink loops and over-long names, and anything that is not a regular file
    (a FIFO would block a read forever, /dev/zero would never end it).
    """
    if "\0" in str(path):
        raise K2Error(f"{what}: file name contains a NUL byte", path=show(str(path)))
    if root is not None and not is_inside(path, root):
        raise K2Error(f"{what} resolves outside the checkpoint directory (symlink?)", path=path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise K2Error(f"{what} not found", path=path) from None
    except OSError as exc:
        raise K2Error(f"cannot read {what}: {exc.strerror or exc}", path=path) from None
    mode, size = (st := os.fstat(fd)).st_mode, st.st_size
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise K2Error(f"{what} is {_kind(mode)}, not a regular file", path=path)
    return fd, size


def read_small(
    path: Path, what: str, *, root: Path | None = None, limit: int = MAX_JSON_BYTES
) -> bytes:
    """The whole of a small regular file (see `open_regular`), refused when over `limit` bytes."""
    fd, size = open_regular(path, what, root=root)
    with open(fd, "rb") as fh:
        if size > limit:
            raise K2Error(f"{what} is {size:,} bytes, over the {limit:,}-byte limit", path=path)
        try:
            data = fh.read(size)  # sized by fstat: no limit-sized buffer for a small file
            step = 1  # EOF is the usual answer: probe without allocating a big buffer
            while len(data) <= limit and (more := fh.read(min(step, limit + 1 - len(data)))):
                data, step = data + more, 1 << 16  # a file still growing
        except OSError as exc:
            raise K2Error(f"cannot read {what}: {exc.strerror or exc}", path=path) from None
    if len(data) > limit:
        raise K2Error(f"{what} grew past the {limit:,}-byte limit while read", path=path)
    return data


def parse_json(
    data: bytes | str,
    path: Path | str,
    what: str = "file",
    *,
    pairs_hook: Any = None,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Strict UTF-8 JSON, nesting at most `max_depth` levels; every failure one line naming
    `path` (and the top-level field, for nesting).

    >>> parse_json('{"a": [[[1]]]}', "x.json", max_depth=3)
    Traceback (most recent call last):
    k2trt.errors.K2Error: x.json: field 'a' is nested deeper than 3 levels
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise K2Error(f"{what} is not valid UTF-8 (byte {exc.start})", path=path) from None
    try:
        value = json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as exc:
        raise K2Error(f"{what} is not valid JSON: {exc}", path=path) from None
    except RecursionError:
        raise _too_deep(path, what, _deep_field_in_text(text, max_depth), max_depth) from None
    except ValueError as exc:  # e.g. an integer past Python's 4,300-digit conversion limit
        reason = str(exc).split(":")[0]
        raise K2Error(f"{what} is not usable JSON: {reason}", path=path) from None
    found = _deep_field(value, max_depth) if may_nest_deeper(text, max_depth) else None
    if found is not None:
        raise _too_deep(path, what, found, max_depth)
    return value


def may_nest_deeper(text: str | bytes, limit: int) -> bool:
    """False when JSON `text` cannot nest deeper than `limit`: it has no more opening brackets
    than that (brackets inside strings count too, so this only over-estimates). Lets a parser
    skip walking the decoded value, as nearly every real file and body allows."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") > limit
    return text.count("[") + text.count("{") > limit


def _too_deep(path: Path | str, what: str, field: str, limit: int) -> K2Error:
    where = f"field {show(field)}" if field else what
    return K2Error(f"{where} is nested deeper than {limit} levels", path=path)


def _deep_field(value: Any, limit: int) -> str | None:
    """The top-level key under which `value` nests deeper than `limit` ('' at the top), or None."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, field = stack.pop()
        if depth > limit:
            return field
        if isinstance(node, dict):
            items = node.items()
        elif isinstance(node, list):
            items = enumerate(node)  # type: ignore[assignment]
        else:
            continue
        for key, child in items:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1, field or (str(key) if depth == 1 else "")))
    return None


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _deep_field_in_text(text: str, limit: int) -> str:
    """For text too deep to parse: the top-level key before the point it passes `limit`.
    Only the prefix the parser already accepted is scanned, so strings there are closed."""
    depth, key = 0, ""
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return key
        elif token in "]}":
            depth -= 1
        elif depth == 1:
            key = token[1:-1]
    return key


def read_json(
    path: Path,
    what: str = "file",
    *,
    root: Path | None = None,
    limit: int = MAX_JSON_BYTES,
    pairs_hook: Any = None,
) -> Any:
    """Parse a small JSON file safely (`read_small` + `parse_json`): one-line errors naming the
    file. `root`: the file must resolve inside it (a checkpoint's own files)."""
    data = read_small(path, what, root=root, limit=limit)
    return parse_json(data, path, what, pairs_hook=pairs_hook)


def files_under(root: Path) -> list[Path]:
    """Every regular file under `root`, sorted by relative path; hidden names (and what is
    under them: partial outputs, locks) left out."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` at `dst`; copy where a link cannot be made (another filesystem)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
